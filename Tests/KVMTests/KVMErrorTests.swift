import Glibc
import Testing

@testable import KVM

@Suite struct KVMErrorTests {
    @Test(arguments: [ENOMEM, EINVAL, EEXIST, EFAULT])
    func descriptionNamesTheCallAndTheErrno(code: Int32) {
        let error = KVMError(call: "KVM_SET_USER_MEMORY_REGION", errno: code)
        let reason = String(cString: strerror(code))
        #expect(!reason.isEmpty)
        #expect(error.description.hasPrefix("KVM_SET_USER_MEMORY_REGION failed"))
        #expect(error.description.contains(reason))
        #expect(error.description.contains("errno \(code)"))
    }

    @Test func descriptionAddsTheHintAfterTheErrno() {
        let error = KVMError(call: "open(/dev/kvm)", errno: EACCES, hint: "do this")
        #expect(error.description == "open(/dev/kvm) failed: \(String(cString: strerror(EACCES))) (errno \(EACCES)); do this")
    }

    @Test func errnoZeroIsNotDescribedAsAnErrno() {
        let error = KVMError(call: "decode KVM_EXIT_IO", errno: 0, hint: "bad offset")
        #expect(error.description == "decode KVM_EXIT_IO failed; bad offset")
        #expect(KVMError(call: "KVM_RUN", errno: 0).description == "KVM_RUN failed")
    }

    @Test(arguments: [EACCES, EPERM])
    func permissionHintNamesTheKVMGroup(code: Int32) {
        let hint = KVMSystem.openHint(errno: code, path: "/dev/kvm")
        #expect(hint.contains("kvm group"))
        #expect(hint.contains("/dev/kvm"))
        #expect(!hint.contains("modprobe"))
    }

    @Test(arguments: [ENOENT, ENODEV, ENXIO])
    func missingDeviceHintNamesModprobe(code: Int32) {
        let hint = KVMSystem.openHint(errno: code, path: "/tmp/no-such-kvm")
        #expect(hint.contains("modprobe"))
        #expect(hint.contains("/tmp/no-such-kvm"))
        #expect(!hint.contains("kvm group"))
    }

    @Test func otherErrnosGetDistinctHints() {
        let busy = KVMSystem.openHint(errno: EBUSY, path: "/dev/kvm")
        let other = KVMSystem.openHint(errno: EIO, path: "/dev/kvm")
        #expect(busy.contains("busy"))
        #expect(other != busy)
        #expect(!other.contains("modprobe") && !other.contains("kvm group"))
    }
}
