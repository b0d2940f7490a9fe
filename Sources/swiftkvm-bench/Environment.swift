import Glibc

/// The host the numbers come from, in one line: kernel, which KVM, CPUs, load.
struct HostEnvironment {
    let kernel: String
    let kvm: String
    let cpus: Int
    let loadAverage: String?
    /// The 1-minute load average.
    let load: Double?

    static func current() -> HostEnvironment {
        var names = utsname()
        uname(&names)
        let kernel = withUnsafeBytes(of: &names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }

        let kvm: String
        if access("/sys/module/kvm_pvm", F_OK) == 0 {
            kvm = "KVM-PVM (nested, ring 0 emulated)"
        } else if access("/sys/module/kvm_intel", F_OK) == 0 {
            kvm = "hardware KVM (kvm_intel, VT-x)"
        } else if access("/sys/module/kvm_amd", F_OK) == 0 {
            kvm = "hardware KVM (kvm_amd, AMD-V)"
        } else {
            kvm = "hardware KVM"
        }

        var loadAverage: String?
        var load: Double?
        if let file = fopen("/proc/loadavg", "r") {
            defer { fclose(file) }
            var line = [CChar](repeating: 0, count: 128)
            if fgets(&line, Int32(line.count), file) != nil {
                let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                loadAverage = text.split(separator: " ").prefix(3).joined(separator: " ")
                load = text.split(separator: " ").first.flatMap { Double($0) }
            }
        }
        return HostEnvironment(
            kernel: kernel, kvm: kvm, cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), loadAverage: loadAverage, load: load)
    }

    var line: String {
        var text = "environment: Linux \(kernel), \(kvm), \(cpus) CPUs online"
        if let loadAverage { text += ", load average \(loadAverage)" }
        return text
    }

    /// A warning when other processes compete for the CPUs (the load average counts runnable tasks).
    var busyWarning: String? {
        guard let load, load >= Double(max(cpus, 1)) * 0.75 else { return nil }
        return "warning: the host is busy (load \(loadAverage ?? "?") on \(cpus) CPUs): other processes compete with both sides, so the numbers are noisy and inflated; the ratios are still side by side"
    }
}
