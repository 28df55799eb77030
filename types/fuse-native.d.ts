// The part of fuse-native 2.2.6 (untyped) that the libfuse2 session uses.
declare module 'fuse-native' {
  class Fuse {
    constructor(mountpoint: string, ops: Record<string, unknown>, options: Record<string, unknown>);
    mount(cb: (err?: Error | null) => void): void;
    unmount(cb: (err?: Error | null) => void): void;
    static unmount(mountpoint: string, cb: (err?: Error | null) => void): void;
    static readonly ENODATA: number;
    static readonly ENOENT: number;
  }
  export = Fuse;
}
