import Testing

@testable import VMM

struct CPUIDPolicyTests {
    let supported: [CPUIDEntry] = [
        CPUIDEntry(function: 0, eax: 0xD, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),
        CPUIDEntry(function: 1, eax: 0x000A_0F11, ebx: 0xFF08_0800, ecx: 0xFEDA_3203, edx: 0x178B_FBFF),
        CPUIDEntry(function: 7, flags: 1, eax: 0, ebx: 0xF1BF_07AB, ecx: 0x0040_5FCE, edx: 0),
        CPUIDEntry(function: 0xB, index: 0, flags: 1, eax: 1, ebx: 2, ecx: 0x100, edx: 7),
        CPUIDEntry(function: 0xB, index: 1, flags: 1, eax: 4, ebx: 16, ecx: 0x201, edx: 7),
        CPUIDEntry(function: 0xD, index: 1, flags: 1, eax: 0xF, ebx: 0, ecx: 0, edx: 0),
        CPUIDEntry(function: 0x8000_0001, eax: 0, ebx: 0, ecx: 0, edx: 0x2FD3_FBFF),
    ]

    func entry(_ entries: [CPUIDEntry], _ function: UInt32, _ index: UInt32 = 0) throws -> CPUIDEntry {
        try #require(entries.first { $0.function == function && $0.index == index })
    }

    @Test func apicIDsCountAndHypervisorBitPerVCPU() throws {
        let policy = CPUIDPolicy()
        for index in UInt32(0)..<4 {
            let entries = policy.entries(from: supported, vcpu: index, of: 4)
            let leaf1 = try entry(entries, 1)
            #expect(leaf1.ebx >> 24 == index, "initial APIC id")
            #expect(leaf1.ebx >> 16 & 0xFF == 4, "logical processor count")
            #expect(leaf1.ebx & 0xFFFF == 0x0800, "CLFLUSH size and brand index kept")
            #expect(leaf1.ecx & 1 << 31 != 0, "hypervisor present")
            #expect(leaf1.edx & 1 << 28 != 0, "HTT with more than one CPU")
            #expect(try entry(entries, 0xB, 0).edx == index)
            #expect(try entry(entries, 0xB, 1).edx == index)
            #expect(try entry(entries, 0) == supported[0], "the vendor leaf is untouched")
        }
    }

    /// One package of N single-thread cores, whatever the host's own topology says.
    @Test(arguments: [(UInt32(1), UInt32(0)), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4)])
    func extendedTopologyDescribesOnePackageOfSingleThreadCores(count: UInt32, coreBits: UInt32) throws {
        let entries = CPUIDPolicy().entries(from: supported, vcpu: count - 1, of: count)
        let threads = try entry(entries, 0xB, 0)
        #expect((threads.eax, threads.ebx, threads.ecx, threads.edx) == (0, 1, 0x100, count - 1))
        let cores = try entry(entries, 0xB, 1)
        #expect((cores.eax, cores.ebx, cores.ecx, cores.edx) == (coreBits, count, 0x201, count - 1))
    }

    @Test func removingFeaturesClearsTheirBitsAndDependents() throws {
        let policy = try CPUIDPolicy(parsing: "-xsave, -cx16,-smap,-rdtscp")
        let entries = policy.entries(from: supported, vcpu: 0, of: 1)
        let leaf1 = try entry(entries, 1)
        #expect(leaf1.ecx & 1 << 26 == 0, "xsave")
        #expect(leaf1.ecx & 1 << 27 == 0, "osxsave follows xsave")
        #expect(leaf1.ecx & 1 << 28 == 0, "avx needs xsave")
        #expect(leaf1.ecx & 1 << 13 == 0, "cx16")
        #expect(leaf1.ecx & 1 << 23 != 0, "popcnt kept")
        let leaf7 = try entry(entries, 7)
        #expect(leaf7.ebx & 1 << 20 == 0, "smap")
        #expect(leaf7.ebx & 1 << 5 == 0, "avx2 needs xsave")
        #expect(leaf7.ebx & 1 << 7 != 0, "smep kept")
        #expect(try entry(entries, 0xD, 1).eax & 0b1011 == 0, "xsaveopt, xsavec, xsaves")
        #expect(try entry(entries, 0x8000_0001).edx & 1 << 27 == 0, "rdtscp")
        #expect(try entry(entries, 0x8000_0001).edx & 1 << 26 != 0, "pdpe1gb kept")
    }

    /// KVM_GET_SUPPORTED_CPUID never reports the TSC-deadline timer; the VMM adds it when its
    /// in-kernel local APIC has one, and --cpu-features can still take it away.
    @Test func theTSCDeadlineTimerIsOfferedOnlyWhenAskedAndNotRemoved() throws {
        var policy = CPUIDPolicy()
        #expect(try entry(policy.entries(from: supported, vcpu: 0, of: 1), 1).ecx & 1 << 24 == 0)
        policy.tscDeadlineTimer = true
        let entries = policy.entries(from: supported, vcpu: 0, of: 1)
        #expect(try entry(entries, 1).ecx & 1 << 24 != 0)
        #expect(try entry(entries, 7) == supported[2], "no other leaf changes")
        var removed = try CPUIDPolicy(parsing: "-tsc_deadline_timer")
        removed.tscDeadlineTimer = true
        #expect(try entry(removed.entries(from: supported, vcpu: 0, of: 1), 1).ecx & 1 << 24 == 0)
    }

    @Test(arguments: ["xsave", "+xsave", "-warpdrive", "-xsave,frob"])
    func badFeatureListsAreClearErrors(text: String) {
        #expect(throws: VMMError.self) { try CPUIDPolicy(parsing: text) }
    }

    @Test func anEmptyListRemovesNothing() throws {
        let policy = try CPUIDPolicy(parsing: "")
        #expect(policy.removed.isEmpty)
        #expect(policy.entries(from: supported, vcpu: 0, of: 1)[2] == supported[2])
    }
}

struct LinuxEntryLayoutTests {
    @Test func tablesAndRegistersFollowTheSixtyFourBitBootProtocol() throws {
        let memory = try GuestMemory(size: 16 << 20)
        let layout = LinuxEntryLayout()
        try layout.install(in: memory)
        #expect(try memory.load(UInt64.self, at: GuestAddress(LinuxEntryLayout.gdtAddress + 0x10)) == 0x00AF_9B00_0000_FFFF)
        #expect(try memory.load(UInt64.self, at: GuestAddress(LinuxEntryLayout.gdtAddress + 0x18)) == 0x00CF_9300_0000_FFFF)
        // Walk the identity map for the kernel's load address and the zero page.
        let base = LinuxEntryLayout.pageTablesAddress
        for address: UInt64 in [0x7000, 0x10_0000, 0x20_0000, 0xBFE0_0000] {
            let pml4e = try memory.load(UInt64.self, at: GuestAddress(base + (address >> 39 & 0x1FF) * 8))
            let pdpte = try memory.load(UInt64.self, at: GuestAddress((pml4e & ~0xFFF) + (address >> 30 & 0x1FF) * 8))
            let pde = try memory.load(UInt64.self, at: GuestAddress((pdpte & ~0xFFF) + (address >> 21 & 0x1FF) * 8))
            #expect(pml4e & 0x7 == 0x3 && pdpte & 0x7 == 0x3, "present, writable, supervisor")
            #expect(pde & 0x80 != 0, "2 MiB page")
            #expect(pde & ~0x1F_FFFF == address & ~0x1F_FFFF, "identity")
        }
        let (registers, special) = layout.cpuState(entry: 0x10_0200, zeroPage: 0x7000, from: SpecialRegisters())
        #expect(registers.rip == 0x10_0200)
        #expect(registers.rsi == 0x7000)
        #expect(registers.rflags & 0x200 == 0, "interrupts disabled")
        #expect(special.cs.selector == 0x10 && special.cs.longMode)
        #expect(special.ds.selector == 0x18 && special.ss.selector == 0x18)
        #expect(special.cr0 & 0x8000_0001 == 0x8000_0001)
        #expect(special.cr4 & 0x20 != 0)
        #expect(special.efer == 0x500)
        #expect(special.cr3 == base)
        // The tables stay clear of the zero page and the command line.
        #expect(base + UInt64(IdentityPaging.size) <= 0x2_0000)
        #expect(base >= 0x8000)
    }

    @Test func theThirtyTwoBitEntryRunsInProtectedModeWithPagingOff() throws {
        let memory = try GuestMemory(size: 16 << 20)
        let layout = LinuxEntryLayout(entry: .bits32)
        try layout.install(in: memory)
        // boot.rst: __BOOT_CS a flat 32-bit execute/read segment, __BOOT_DS flat read/write.
        #expect(try memory.load(UInt64.self, at: GuestAddress(LinuxEntryLayout.gdtAddress + 0x10)) == 0x00CF_9B00_0000_FFFF)
        #expect(try memory.load(UInt64.self, at: GuestAddress(LinuxEntryLayout.gdtAddress + 0x18)) == 0x00CF_9300_0000_FFFF)
        let (registers, special) = layout.cpuState(entry: 0x10_0000, zeroPage: 0x7000, from: SpecialRegisters())
        #expect(registers.rip == 0x10_0000)
        #expect(registers.rsi == 0x7000)
        #expect(registers.rbx == 0 && registers.rdi == 0 && registers.rbp == 0)
        #expect(registers.rflags & 0x200 == 0, "interrupts disabled")
        #expect(special.cs.selector == 0x10 && special.cs.defaultSize32 && !special.cs.longMode)
        #expect(special.ds.selector == 0x18 && special.es.selector == 0x18 && special.ss.selector == 0x18)
        #expect(special.cr0 & 0x8000_0001 == 0x1, "protected mode, paging off")
        #expect(special.efer & 0x500 == 0)
        #expect(LinuxEntryLayout().entry == .bits64)
    }
}
