// Declarations only (include/CFuzzerDriver.h); the definitions are libFuzzer's.
