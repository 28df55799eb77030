/* The least an auditor can be, for bench/hook.ts: la_version alone, freestanding like audit.c.
   Its launch cost against no LD_AUDIT is the floor of LD_AUDIT in this glibc. */
#define LAV_CURRENT_2 2u /* <link.h>'s LAV_CURRENT in glibc 2.36 */
__attribute__((visibility("default"))) unsigned int la_version(unsigned int version) {
  (void)version;
  return LAV_CURRENT_2;
}
