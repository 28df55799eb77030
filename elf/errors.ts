/**
 * Errors of the ELF part. Two kinds, kept apart because callers treat them differently:
 * - ElfFormatError: the bytes are not a well-formed ELF64 file (truncated, out-of-range offset...).
 *   Carries the file offset of the record that is wrong, like Go's debug/elf FormatError.
 * - ElfRefusal: the file is well-formed but we will not randomize it (not x86-64, no static
 *   relocations, a reference we cannot account for...). "Refuse, don't guess" (DESIGN.md).
 * Both map to the CLI's "refused" exit code; the original library is then loaded unchanged.
 */

function hex(n: number): string {
  return '0x' + n.toString(16);
}

export class ElfFormatError extends Error {
  constructor(
    readonly offset: number,
    readonly msg: string,
    readonly val?: number | string,
  ) {
    super(`${msg}${val === undefined ? '' : ` '${typeof val === 'number' ? hex(val) : val}'`} in record at byte ${hex(offset)}`);
    this.name = 'ElfFormatError';
  }
}

export class ElfRefusal extends Error {
  constructor(
    readonly reason: string,
    /** Virtual address or file offset the reason is about, when there is one. */
    readonly where?: number,
  ) {
    super(where === undefined ? reason : `${reason} at ${hex(where)}`);
    this.name = 'ElfRefusal';
  }
}

/** The verifier found the output image wrong: never written. A refusal, with its own class for tests. */
export class VerifyError extends ElfRefusal {
  constructor(reason: string, where?: number) {
    super(`verification failed: ${reason}`, where);
    this.name = 'VerifyError';
  }
}

export { hex };
