// swift-tools-version: 6.0
import PackageDescription

// Targets follow the direction of dependencies described in docs/architecture.md:
//   CKVM ← KVM ← VMM → Devices, LinuxBoot, Virtio → VMMCore; ACPI → VMMCore; VMM → VMConfig
// Only KVM calls into CKVM's ioctls; Devices and VMMCore never see /dev/kvm, so they (and the
// loader and the virtqueue code) are testable anywhere.
let package = Package(
    name: "SwiftKVM",
    products: [
        .library(name: "VMM", targets: ["VMM"]),
        // For the libFuzzer harnesses in Fuzz/ (a package of their own, since libFuzzer has the main).
        .library(name: "VMMCore", targets: ["VMMCore"]),
        .library(name: "Devices", targets: ["Devices"]),
        .library(name: "LinuxBoot", targets: ["LinuxBoot"]),
        .library(name: "Virtio", targets: ["Virtio"]),
        .library(name: "VMConfig", targets: ["VMConfig"]),
        .library(name: "ControlAPI", targets: ["ControlAPI"]),
        .executable(name: "swiftkvm", targets: ["swiftkvm"]),
        .executable(name: "swiftkvm-bench", targets: ["swiftkvm-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // `make docs`: DocC for the public API (a command plugin; nothing links against it).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CKVM"),
        // C: <sys/epoll.h>, <sys/timerfd.h>, <sys/signalfd.h> for the VMM's event loop (Glibc lacks them).
        .target(name: "CEvents"),
        // C: <linux/if_tun.h> constants and ioctl shims for the tap backend.
        .target(name: "CNet"),
        .target(name: "KVM", dependencies: ["CKVM"]),
        .target(name: "VMMCore"),
        // The one description of a VM (Codable), shared by the CLI, the API and importers.
        .target(name: "VMConfig"),
        // The control API: an HTTP/1.1 server on a Unix socket and the VMController protocol the VMM
        // implements. FoundationEssentials (JSON) and VMConfig only: no VMM, no KVM.
        .target(name: "ControlAPI", dependencies: ["VMConfig"]),
        // Kept VMs: the folder per VM, its lock, state and event files, the size-capped console log
        // and the console socket's fan-out. FoundationEssentials and VMConfig only: no VMM, no KVM.
        .target(name: "VMStore", dependencies: ["VMConfig"]),
        .target(name: "ControlAPIMock", dependencies: ["ControlAPI", "VMConfig"]),
        .executableTarget(name: "api-mock-server", dependencies: ["ControlAPI", "ControlAPIMock"]),
        // libvirt domain XML in and out of a VMConfiguration, parsed by Debian's libxml2.
        .systemLibrary(name: "CLibXML2", pkgConfig: "libxml-2.0", providers: [.apt(["libxml2-dev"])]),
        .target(name: "LibvirtXML", dependencies: ["VMConfig", "CLibXML2"]),
        .target(name: "Devices", dependencies: ["VMMCore"]),
        .target(name: "LinuxBoot", dependencies: ["VMMCore"]),
        .target(name: "Virtio", dependencies: ["VMMCore"]),
        .target(name: "ACPI", dependencies: ["VMMCore"]),
        // Host-side kernel decompression: Debian's compression libraries, kept out of the VMM core.
        .systemLibrary(name: "CLZMA", pkgConfig: "liblzma", providers: [.apt(["liblzma-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CLZO", pkgConfig: "lzo2", providers: [.apt(["liblzo2-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CBZip2", providers: [.apt(["libbz2-dev"])]),  // no .pc file: links bz2
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CMalloc"),  // glibc's malloc.h (malloc_trim), nothing to link
        .target(
            name: "KernelDecompression",
            dependencies: ["LinuxBoot", "CLZMA", "CLZ4", "CZstd", "CLZO", "CZlib", "CBZip2", "CCrypto", "CMalloc"]),
        .target(name: "VMM", dependencies: ["KVM", "CEvents", "VMMCore", "VMConfig", "Devices", "LinuxBoot", "Virtio", "ACPI", "KernelDecompression", "CNet"]),
        // The seccomp filter: Debian's libseccomp (libseccomp-dev) and a C SIGSYS handler.
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .target(name: "CSandbox"),
        .target(name: "Sandbox", dependencies: ["CSeccomp", "CSandbox"]),
        .executableTarget(
            name: "swiftkvm",
            dependencies: ["VMM", "VMConfig", "ControlAPI", "VMStore", "LibvirtXML", "Sandbox", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(name: "swiftkvm-bench", dependencies: ["VMM"]),
        // Helpers several test targets share (not a test target itself).
        .target(name: "TestSupport", dependencies: ["Virtio", "VMMCore"], path: "Tests/TestSupport"),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "CKVM"]),
        .testTarget(name: "VMMCoreTests", dependencies: ["VMMCore", "TestSupport"]),
        .testTarget(name: "VMConfigTests", dependencies: ["VMConfig"]),
        .testTarget(name: "VMStoreTests", dependencies: ["VMStore", "VMConfig"]),
        .testTarget(name: "ControlAPITests", dependencies: ["ControlAPI", "ControlAPIMock", "VMConfig"]),
        .testTarget(name: "LibvirtXMLTests", dependencies: ["LibvirtXML", "VMConfig"], exclude: ["Fixtures"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "TestSupport"]),
        .testTarget(name: "LinuxBootTests", dependencies: ["LinuxBoot"]),
        .testTarget(name: "KernelDecompressionTests", dependencies: ["KernelDecompression", "LinuxBoot"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "VMMCore", "TestSupport"]),
        .testTarget(name: "ACPITests", dependencies: ["ACPI", "VMMCore", "LinuxBoot"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "KVM", "TestSupport"]),
        .testTarget(name: "CLITests", dependencies: []),
        // docs/ and the READMEs name only files and types that exist (reads the tree; no module).
        .testTarget(name: "DocsTests", dependencies: []),
    ],
    swiftLanguageModes: [.v5]
)
