// swift-tools-version: 6.0
// libFuzzer harnesses for everything in SwiftKVM that takes untrusted bytes (`make fuzz`).
//
// A separate package because a fuzz executable has no main (libFuzzer supplies it): each harness
// is built with `-sanitize=fuzzer,address -parse-as-library` and defines LLVMFuzzerTestOneInput.
//
// Adding a harness: a folder Sources/NAME with one Swift file (LLVMFuzzerTestOneInput and a
// `NAME_main`, see FuzzSupport's runFuzzer), a seed corpus in corpus/NAME/, and
// one line in `harnesses` below. The Makefile finds it by its corpus folder.
import Foundation
import PackageDescription

let harnesses: [(name: String, products: [String])] = [
    ("bzimage", ["LinuxBoot", "VMMCore"]),
    ("virtio-blk", ["Virtio", "VMMCore"]),
    ("virtio-mmio", ["Virtio", "VMMCore"]),
    ("serial16550", ["Devices", "VMMCore"]),
    ("pit8254", ["Devices", "VMMCore"]),
    ("i8042", ["Devices", "VMMCore"]),
    ("cli-values", ["VMM"]),
    ("http-request", ["ControlAPI"]),
    ("vm-config", ["VMConfig"]),
    ("snapshot-state", ["VMM", "VMMCore", "Devices"]),
]

// A path dependency's identity is its folder's name (the clone may be called anything).
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "SwiftKVMFuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "CFuzzDriver", path: "Sources/CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver"], path: "Sources/FuzzSupport"),
    ]
        + harnesses.map { harness in
            .executableTarget(
                name: harness.name,
                dependencies: ["FuzzSupport"] + harness.products.map { .product(name: $0, package: root) },
                path: "Sources/\(harness.name)")
        },
    swiftLanguageModes: [.v5]
)
