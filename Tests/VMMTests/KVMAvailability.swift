import Glibc
import KVM
import Testing

/// Whether tests that need /dev/kvm run here.
///
/// They skip only when /dev/kvm is truly absent and `CI` is unset. In CI a missing /dev/kvm is a
/// failure: `shouldRun` is then true, and the tests fail on the open error that says why.
enum KVMAvailability {
    static var isCI: Bool { getenv("CI").map { String(cString: $0) }.map { !$0.isEmpty && $0 != "0" && $0 != "false" } ?? false }
    static var shouldRun: Bool { KVMSystem.deviceExists || isCI }
    static let skipReason: Comment = "/dev/kvm is absent on this machine (and CI is unset)"
}
