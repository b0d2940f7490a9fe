// LLVMFuzzerRunDriver is in libclang_rt.fuzzer, linked by -sanitize=fuzzer; this target only
// declares it (include/CFuzzDriver.h).
