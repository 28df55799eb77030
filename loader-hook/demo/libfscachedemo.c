/* The randomizable library of `fscache demo`: small functions calling one another, so that a
   shuffled image prints the original's checksum only if every call in it still lands right. */
unsigned demo_mix(unsigned h, unsigned v) { return (h ^ v) * 16777619u; }
unsigned demo_rotate(unsigned x, unsigned k) { return (x << (k & 31)) | (x >> ((32 - k) & 31)); }
unsigned demo_square(unsigned x) { return x * x + 1; }
unsigned demo_byte(const char *s, int i) { return (unsigned char)s[i]; }
unsigned demo_round(unsigned h, unsigned v) { return demo_rotate(demo_mix(h, v), v) + demo_square(v); }
unsigned demo_fold(const char *s) {
  unsigned h = 2166136261u;
  for (int i = 0; s[i]; i++) h = demo_round(h, demo_byte(s, i));
  return h;
}
unsigned demo_finish(unsigned h) { return demo_mix(h, h >> 16) ^ demo_rotate(h, 13); }
unsigned demo_checksum(const char *s) { return demo_finish(demo_fold(s)); }
