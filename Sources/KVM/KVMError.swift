import Glibc

/// An error from the KVM API: which call failed and the errno it returned.
///
/// Higher layers wrap it with their own context; `description` is a single line that a command-line
/// tool can print as it is.
public struct KVMError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The ioctl or system call that failed, e.g. `"KVM_CREATE_VM"` or `"open(/dev/kvm)"`.
    public let call: String
    /// The errno the call returned, or 0 when the failure is not an errno (a malformed reply).
    public let errno: Int32
    /// Extra words for the reader, such as how to fix the problem.
    public let hint: String?

    public init(call: String, errno: Int32, hint: String? = nil) {
        self.call = call
        self.errno = errno
        self.hint = hint
    }

    public var description: String {
        var text = "\(call) failed"
        if errno != 0 { text += ": \(String(cString: strerror(errno))) (errno \(errno))" }
        if let hint { text += "; \(hint)" }
        return text
    }
}

/// Runs a system call, retrying it while it fails with EINTR, and turns -1 into a `KVMError`.
@inline(__always)
func retryingInterrupts(_ call: @autoclosure () -> String, _ body: () -> Int32) throws(KVMError) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        let error = Glibc.errno
        if error == EINTR { continue }
        throw KVMError(call: call(), errno: error)
    }
}
