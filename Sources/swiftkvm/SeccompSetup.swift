import Glibc
import Sandbox
import VMConfig
import VMM

/// `--seccomp on|off`: the system-call allow-list installed once the machine is built, right
/// before its vCPUs start.
enum SeccompSetup {
    /// Which filter a VM gets.
    enum Mode: Equatable {
        /// `SeccompPolicy.vmm` on every thread: a VM that is built once.
        case strict
        /// A VM the VMM may build again after the first boot (a restart action, or a control API
        /// that can ask for a hard reset): `SeccompPolicy.rebuildingVMM` on the VMM's own threads
        /// (it reads the kernel again and makes a new KVM VM), and `vmm` stacked on every vCPU
        /// and device thread, the ones that handle what the guest writes.
        case rebuilding
        /// `rebuilding`, for a VMM with a control API, which can also write snapshots where its
        /// client says (the VMM's threads may open files for writing; the vCPU and device threads
        /// still may not open anything).
        case controlled
    }

    static func mode(for vm: VMConfiguration, apiSocket: String?) -> Mode {
        if apiSocket != nil { return .controlled }
        return [vm.onPowerOff, vm.onReboot, vm.onCrash].contains(.restart) ? .rebuilding : .strict
    }

    static var strictPolicy: SeccompPolicy {
        SeccompPolicy.vmm(ioctlRequests: KVMSystem.runtimeIoctlRequests + TapBackend.runtimeIoctlRequests)
    }

    /// Installs the VMM's filter; a failure is one line and exit status 1.
    static func install(_ mode: Mode = .strict) {
        do {
            switch mode {
            case .strict:
                try strictPolicy.install()
            case .rebuilding, .controlled:
                try SeccompPolicy.rebuildingVMM(
                    ioctlRequests: KVMSystem.runtimeIoctlRequests + TapBackend.runtimeIoctlRequests,
                    buildRequests: KVMSystem.buildIoctlRequests,
                    snapshotRequests: mode == .controlled ? KVMSystem.snapshotIoctlRequests : nil
                ).install()
                let strict = strictPolicy
                GuestFacingThreads.onStart {
                    do { try strict.install(.callingThread) } catch {
                        printError("\(error)")
                        exit(1)
                    }
                }
            }
        } catch {
            printError(error.description)
            exit(1)
        }
    }

    /// For the tests, which cannot fork inside their own process: with `SWIFTKVM_SECCOMP_SELFTEST`
    /// in the environment, installs a filter and checks it from inside.
    /// - `execve`: the strict filter, then execve(2), which it must stop with its one-line report
    ///   and status 159.
    /// - `rebuilding-opens PATH`: the filter of a VM that can be rebuilt; PATH (a file that
    ///   exists) must open for reading and refuse, with EACCES, to open for writing or to be
    ///   created next to it. Prints one line per open and exits 0 when all went as they must.
    static func runSelfTestIfAsked() {
        guard let value = getenv("SWIFTKVM_SECCOMP_SELFTEST").map({ String(cString: $0) }) else { return }
        switch value {
        case "execve":
            install()
            let arguments: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
            execv("/bin/true", arguments)
            printError("seccomp self-test: execve was not stopped (\(String(cString: strerror(errno))))")
            exit(1)
        case let test where test.hasPrefix("rebuilding-opens "):
            let path = String(test.dropFirst("rebuilding-opens ".count))
            install(.rebuilding)
            var failures = 0
            for (what, file, flags, allowed) in [
                ("read", path, O_RDONLY | O_CLOEXEC, true), ("write", path, O_WRONLY, false), ("read-write", path, O_RDWR, false),
                ("append", path, O_WRONLY | O_APPEND, false), ("create", path + ".new", O_RDONLY | O_CREAT, false),
                ("truncate", path, O_RDONLY | O_TRUNC, false),
            ] {
                let descriptor = open(file, flags, 0o644)
                let error = errno
                if descriptor >= 0 { close(descriptor) }
                let result = descriptor >= 0 ? "opened" : "refused (\(String(cString: strerror(error))))"
                print("\(what): \(result)")
                if allowed ? descriptor < 0 : (descriptor >= 0 || error != EACCES) { failures += 1 }
            }
            exit(failures == 0 ? 0 : 1)
        default:
            return
        }
    }
}

/// Option values several commands share, checked once: a bad one is a usage error (status 2).
enum SharedOptions {
    /// `--seccomp on|off`: whether the filter goes on.
    static func seccomp(_ value: String) throws -> Bool {
        guard value == "on" || value == "off" else { throw UsageError("--seccomp must be on or off, not '\(value)'") }
        return value == "on"
    }

    /// `--time-limit SECONDS` as a duration (nil: no limit).
    static func timeLimit(_ seconds: Double?) throws -> Duration? {
        guard let seconds else { return nil }
        guard seconds > 0, seconds < 1e9 else { throw UsageError("--time-limit must be a positive number of seconds") }
        return .milliseconds(Int64(seconds * 1000))
    }
}
