import Glibc
import Sandbox
import VMConfig
import VMM

/// `--seccomp on|off`: the system-call allow-list (`SeccompPolicy.vmm`) installed once the machine
/// is built, right before its vCPUs start.
enum SeccompSetup {
    /// Whether the filter can go on for `vm`: not when the VMM may have to build a machine again
    /// after the first boot (a restart action, or a control API that can ask for a hard reset),
    /// since that opens files and creates a VM, which the filter forbids.
    static func applies(to vm: VMConfiguration, apiSocket: String?) -> Bool {
        apiSocket == nil && ![vm.onPowerOff, vm.onReboot, vm.onCrash].contains(.restart)
    }

    /// Installs the VMM's filter on every thread; a failure is one line and exit status 1.
    static func install() {
        do {
            try SeccompPolicy.vmm(ioctlRequests: KVMSystem.runtimeIoctlRequests + TapBackend.runtimeIoctlRequests).install()
        } catch {
            printError(error.description)
            exit(1)
        }
    }

    /// For the tests, which cannot fork inside their own process: with
    /// `SWIFTKVM_SECCOMP_SELFTEST=execve` in the environment, installs the filter and then calls
    /// execve(2), which the filter must stop with its one-line report and status 159.
    static func runSelfTestIfAsked() {
        guard let value = getenv("SWIFTKVM_SECCOMP_SELFTEST").map({ String(cString: $0) }), value == "execve" else { return }
        install()
        let arguments: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        execv("/bin/true", arguments)
        printError("seccomp self-test: execve was not stopped (\(String(cString: strerror(errno))))")
        exit(1)
    }
}
