/** Public surface of elf/: the reader, the randomizer, inspect, and the error classes. */
export * from './errors';
export { readElf, readSymbols, readRelas, readDynamic, readNotes, sectionByName } from './reader';
export { randomizeBytes, randomizeFile, parseSeed, prepareLibrary, randomizePrepared } from './randomize';
export type { RandomizeResult, RandomizeOptions, PreparedLibrary } from './randomize';
export type { VerifyMode } from './verify';
export { inspectBytes } from './inspect';
export { unmovedNote } from './layout';
export type { InspectReport } from './inspect';
export { readRegularFile, checkOutputPath } from './files';
