import Testing

@testable import VMM

/// Public library functions check their input instead of trapping on it.
struct PublicInputTests {
    static let sizes: [(Int, String)] = [
        (1536, "1.5 KiB"), (1 << 20, "1 MiB"), ((3 << 30) + (1 << 29), "3.5 GiB"), (1023, "1023 bytes"), (0, "0 bytes"),
        (-5, "-5 bytes"),
        // Above Int.max / 10 and not whole units: `size * 10` overflowed here.
        (Int.max, "8388608.0 TiB"), (Int.max / 10 + 1, "838860.8 TiB"), (Int.max - (1 << 40), "8388607.0 TiB"),
    ]

    @Test(arguments: PublicInputTests.sizes)
    func describeSizeNeverOverflows(size: Int, text: String) {
        #expect(CommandLineValues.describe(size: size) == text)
    }

    /// Leaf 4's cores-per-package field is `count - 1`: with no vCPUs that underflowed.
    @Test func cpuidWithZeroVCPUsIsOneVCPU() {
        let supported = [
            CPUIDEntry(function: 1, eax: 0x000A_0F11, ebx: 0xFF08_0800, ecx: 0xFEDA_3203, edx: 0x178B_FBFF),
            CPUIDEntry(function: 4, index: 0, flags: 1, eax: 0xFC00_4121, ebx: 0x01C0_003F, ecx: 0x3F, edx: 0),
            CPUIDEntry(function: 0xB, index: 1, flags: 1, eax: 4, ebx: 16, ecx: 0x201, edx: 7),
        ]
        let none = CPUIDPolicy().entries(from: supported, vcpu: 0, of: 0)
        let one = CPUIDPolicy().entries(from: supported, vcpu: 0, of: 1)
        #expect(none == one)
        #expect(none.first { $0.function == 4 }.map { $0.eax >> 26 } == 0, "one core per package")
        #expect(none.first { $0.function == 4 }.map { $0.eax & 0x03FF_FFFF } == 0x0000_4121, "the cache fields are kept")
    }
}
