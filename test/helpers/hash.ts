/** The sha256 of bytes, hex: what the tests compare files read through the view with. */
import { createHash } from 'crypto';
import * as fs from 'fs';

export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export const shaOfFile = (file: string): string => sha(fs.readFileSync(file));
