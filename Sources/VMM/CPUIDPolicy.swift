import KVM

/// A CPU feature flag: where CPUID reports it (Intel SDM vol. 2A, CPUID; AMD APM vol. 3, E.3).
public struct CPUFeature: Hashable, Sendable {
    public enum Register: Sendable { case eax, ebx, ecx, edx }

    public let name: String
    public let leaf: UInt32
    public let subleaf: UInt32
    public let register: Register
    public let bit: UInt32

    /// The features `--cpu-features` can remove, by their /proc/cpuinfo names.
    public static let known: [CPUFeature] = [
        .init(name: "sse3", leaf: 1, subleaf: 0, register: .ecx, bit: 0),
        .init(name: "pclmulqdq", leaf: 1, subleaf: 0, register: .ecx, bit: 1),
        .init(name: "ssse3", leaf: 1, subleaf: 0, register: .ecx, bit: 9),
        .init(name: "fma", leaf: 1, subleaf: 0, register: .ecx, bit: 12),
        .init(name: "cx16", leaf: 1, subleaf: 0, register: .ecx, bit: 13),
        .init(name: "pcid", leaf: 1, subleaf: 0, register: .ecx, bit: 17),
        .init(name: "sse4_1", leaf: 1, subleaf: 0, register: .ecx, bit: 19),
        .init(name: "sse4_2", leaf: 1, subleaf: 0, register: .ecx, bit: 20),
        .init(name: "x2apic", leaf: 1, subleaf: 0, register: .ecx, bit: 21),
        .init(name: "movbe", leaf: 1, subleaf: 0, register: .ecx, bit: 22),
        .init(name: "popcnt", leaf: 1, subleaf: 0, register: .ecx, bit: 23),
        .init(name: "tsc_deadline_timer", leaf: 1, subleaf: 0, register: .ecx, bit: 24),
        .init(name: "aes", leaf: 1, subleaf: 0, register: .ecx, bit: 25),
        .init(name: "xsave", leaf: 1, subleaf: 0, register: .ecx, bit: 26),
        .init(name: "avx", leaf: 1, subleaf: 0, register: .ecx, bit: 28),
        .init(name: "f16c", leaf: 1, subleaf: 0, register: .ecx, bit: 29),
        .init(name: "rdrand", leaf: 1, subleaf: 0, register: .ecx, bit: 30),
        .init(name: "fsgsbase", leaf: 7, subleaf: 0, register: .ebx, bit: 0),
        .init(name: "bmi1", leaf: 7, subleaf: 0, register: .ebx, bit: 3),
        .init(name: "avx2", leaf: 7, subleaf: 0, register: .ebx, bit: 5),
        .init(name: "smep", leaf: 7, subleaf: 0, register: .ebx, bit: 7),
        .init(name: "bmi2", leaf: 7, subleaf: 0, register: .ebx, bit: 8),
        .init(name: "erms", leaf: 7, subleaf: 0, register: .ebx, bit: 9),
        .init(name: "invpcid", leaf: 7, subleaf: 0, register: .ebx, bit: 10),
        .init(name: "avx512f", leaf: 7, subleaf: 0, register: .ebx, bit: 16),
        .init(name: "rdseed", leaf: 7, subleaf: 0, register: .ebx, bit: 18),
        .init(name: "adx", leaf: 7, subleaf: 0, register: .ebx, bit: 19),
        .init(name: "smap", leaf: 7, subleaf: 0, register: .ebx, bit: 20),
        .init(name: "umip", leaf: 7, subleaf: 0, register: .ecx, bit: 2),
        .init(name: "pku", leaf: 7, subleaf: 0, register: .ecx, bit: 3),
        .init(name: "la57", leaf: 7, subleaf: 0, register: .ecx, bit: 16),
        .init(name: "rdpid", leaf: 7, subleaf: 0, register: .ecx, bit: 22),
        .init(name: "xsaveopt", leaf: 0xD, subleaf: 1, register: .eax, bit: 0),
        .init(name: "xsavec", leaf: 0xD, subleaf: 1, register: .eax, bit: 1),
        .init(name: "xsaves", leaf: 0xD, subleaf: 1, register: .eax, bit: 3),
        .init(name: "pdpe1gb", leaf: 0x8000_0001, subleaf: 0, register: .edx, bit: 26),
        .init(name: "rdtscp", leaf: 0x8000_0001, subleaf: 0, register: .edx, bit: 27),
    ]

    /// Features that only make sense with another one: removing the key removes the values too.
    static let dependents: [String: [String]] = [
        "xsave": ["avx", "avx2", "avx512f", "fma", "f16c", "xsaveopt", "xsavec", "xsaves"],
        "avx": ["avx2", "avx512f", "fma", "f16c"],
    ]
}

/// What the guest's CPUID says: the host's supported leaves (KVM_GET_SUPPORTED_CPUID), adjusted as
/// a VMM must — each vCPU's APIC id and the processor count, the hypervisor bit — and with the
/// features the user removed cleared.
public struct CPUIDPolicy: Equatable, Sendable {
    public private(set) var removed: Set<String> = []
    /// Whether to offer the TSC-deadline timer (CPUID.1:ECX[24]). KVM_GET_SUPPORTED_CPUID leaves it
    /// clear because it needs the in-kernel local APIC: a VMM with one, on a KVM with
    /// KVM_CAP_TSC_DEADLINE_TIMER, sets it. Linux then programs its timer with one MSR write.
    public var tscDeadlineTimer = false

    public init() {}

    /// Parses `-xsave,-cx16,…`: a comma-separated list of features to remove, each with a leading `-`.
    /// Adding features is not offered: a guest told about a feature KVM cannot provide would crash.
    public init(parsing text: String) throws(VMMError) {
        for word in text.split(separator: ",").map({ $0.trimmingCharacters() }) where !word.isEmpty {
            guard word.hasPrefix("-") else {
                throw .configuration("--cpu-features '\(word)': only removing features is supported, write -\(word.hasPrefix("+") ? String(word.dropFirst()) : word)")
            }
            let name = String(word.dropFirst()).lowercased()
            guard CPUFeature.known.contains(where: { $0.name == name }) else {
                let names = CPUFeature.known.map(\.name).joined(separator: ", ")
                throw .configuration("--cpu-features: unknown feature '\(name)'; known: \(names)")
            }
            removed.insert(name)
            for dependent in CPUFeature.dependents[name] ?? [] { removed.insert(dependent) }
        }
    }

    /// The CPUID table for vCPU `index` of `count`. A machine has at least one vCPU: a `count` of
    /// 0 is taken as 1.
    public func entries(from supported: [CPUIDEntry], vcpu index: UInt32, of count: UInt32) -> [CPUIDEntry] {
        let count = max(count, 1)
        let features = CPUFeature.known.filter { removed.contains($0.name) }
        return supported.map { original in
            var entry = original
            if tscDeadlineTimer, entry.function == 1 { entry.ecx |= 1 << 24 }
            for feature in features where feature.leaf == entry.function && feature.subleaf == entry.index {
                let mask = ~(UInt32(1) << feature.bit)
                switch feature.register {
                case .eax: entry.eax &= mask
                case .ebx: entry.ebx &= mask
                case .ecx: entry.ecx &= mask
                case .edx: entry.edx &= mask
                }
            }
            switch entry.function {
            case 1:
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package; ECX[31] hypervisor.
                entry.ebx = (entry.ebx & 0x0000_FFFF) | (index & 0xFF) << 24 | (min(count, 255) & 0xFF) << 16
                entry.ecx |= 1 << 31
                if removed.contains("xsave") { entry.ecx &= ~(UInt32(1) << 27) }  // OSXSAVE follows XSAVE
                if count > 1 { entry.edx |= 1 << 28 }  // HTT: the EBX count is valid
            case 4:
                // Deterministic cache parameters: EAX[31:26] is the cores per package minus one.
                entry.eax = (entry.eax & 0x03FF_FFFF) | (min(count, 64) - 1) << 26
            case 0xB, 0x1F:
                // Extended topology, as one package of `count` single-thread cores: subleaf 0 is the
                // thread level (1 per core), subleaf 1 the core level; EAX is the APIC-id shift to the
                // next level, ECX[15:8] the level type, EDX the x2APIC id on every subleaf.
                let coreBits = UInt32(count > 1 ? 32 - (count - 1).leadingZeroBitCount : 0)
                switch entry.index {
                case 0: (entry.eax, entry.ebx, entry.ecx) = (0, 1, 1 << 8)
                case 1: (entry.eax, entry.ebx, entry.ecx) = (coreBits, count, 2 << 8 | 1)
                default: (entry.eax, entry.ebx, entry.ecx) = (0, 0, entry.index)
                }
                entry.edx = index
            default:
                break
            }
            return entry
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
