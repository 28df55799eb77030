# fscache-randomizable.bbclass: builds a recipe's shared libraries so that fscache can
# randomize them on the device. Use `inherit fscache-randomizable` in a recipe or a
# .bbappend, or INHERIT += "fscache-randomizable" in local.conf for every recipe.
#
# -ffunction-sections: one section per function, the units the randomizer shuffles.
# --emit-relocs: the linker keeps the static relocations (.rela.text), which tell the
#   randomizer every reference into the code it moves. OE's stripping (strip
#   --strip-unneeded --remove-section=.comment --remove-section=.note) keeps them.
# The randomizer handles x86-64 shared objects (MACHINE qemux86-64, genericx86-64, ...);
# for other targets the flags are harmless and fscache loads the libraries unchanged.

TARGET_CFLAGS:append = " -ffunction-sections"
TARGET_CXXFLAGS:append = " -ffunction-sections"
TARGET_LDFLAGS:append = " -Wl,--emit-relocs"
