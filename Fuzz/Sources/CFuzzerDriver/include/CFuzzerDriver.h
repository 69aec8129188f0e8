#pragma once
#include <stddef.h>
#include <stdint.h>

// libFuzzer's own entry (compiler-rt, FuzzerDriver.cpp), linked in by -sanitize=fuzzer. SwiftPM
// renames an executable's `main` on Linux, so libFuzzer's `main` cannot be the program's: each
// target's @main calls this instead.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
