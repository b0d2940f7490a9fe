import FoundationEssentials
import VMConfig

// The JSON bodies the API takes, with Firecracker's field names (its swagger document,
// src/firecracker/swagger/firecracker.yaml) so its clients work. Each is decoded strictly: an
// unknown field is refused by name, and a field Firecracker has but swiftkvm cannot honour is
// refused as unsupported rather than ignored.

/// `PATCH /vm`.
struct VMStateBody: Decodable {
    enum State: String, CaseIterable { case paused = "Paused", resumed = "Resumed" }
    var state: State

    enum CodingKeys: String, CodingKey, CaseIterable { case state }

    init(from decoder: any Decoder) throws {
        try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        state = try BodyKeys.choice(container, .state, State.self)
    }
}

/// `PUT /actions`: Firecracker's `InstanceActionInfo`, with swiftkvm's actions added.
struct ActionBody: Decodable {
    enum Action: String, CaseIterable {
        case instanceStart = "InstanceStart"
        case sendCtrlAltDel = "SendCtrlAltDel"
        case powerButton = "PowerButton"
        case hardReset = "HardReset"
        case stop = "Stop"
        case kill = "Kill"
    }
    var action: Action

    enum CodingKeys: String, CodingKey, CaseIterable { case actionType = "action_type" }

    init(from decoder: any Decoder) throws {
        try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        action = try BodyKeys.choice(container, .actionType, Action.self)
    }
}

/// `GET` and `PUT /machine-config`: Firecracker's `MachineConfiguration`. swiftkvm has no SMT
/// topology, dirty-page tracking, CPU templates or huge pages: those fields are accepted only
/// with the value that means "off".
struct MachineConfigBody: Codable, Equatable {
    var vcpuCount: Int
    var memSizeMib: Int
    var smt: Bool = false
    var trackDirtyPages: Bool = false
    var cpuTemplate: String? = nil
    var hugePages: String = "None"

    enum CodingKeys: String, CodingKey, CaseIterable {
        case vcpuCount = "vcpu_count"
        case memSizeMib = "mem_size_mib"
        case smt
        case trackDirtyPages = "track_dirty_pages"
        case cpuTemplate = "cpu_template"
        case hugePages = "huge_pages"
    }

    init(vcpuCount: Int, memSizeMib: Int) {
        self.vcpuCount = vcpuCount
        self.memSizeMib = memSizeMib
    }

    init(from decoder: any Decoder) throws {
        try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        vcpuCount = try BodyKeys.integer(container, .vcpuCount)
        memSizeMib = try BodyKeys.integer(container, .memSizeMib)
        smt = try BodyKeys.optional(container, .smt, Bool.self) ?? false
        trackDirtyPages = try BodyKeys.optional(container, .trackDirtyPages, Bool.self) ?? false
        cpuTemplate = try BodyKeys.optional(container, .cpuTemplate, String.self)
        hugePages = try BodyKeys.optional(container, .hugePages, String.self) ?? "None"
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(vcpuCount, forKey: .vcpuCount)
        try container.encode(memSizeMib, forKey: .memSizeMib)
        try container.encode(smt, forKey: .smt)
        try container.encode(trackDirtyPages, forKey: .trackDirtyPages)
        try container.encode(hugePages, forKey: .hugePages)
    }
}

/// `PUT /boot-source`: Firecracker's `BootSource` (a Linux kernel).
struct BootSourceBody: Decodable {
    var kernelImagePath: String
    var bootArgs: String?
    var initrdPath: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case kernelImagePath = "kernel_image_path"
        case bootArgs = "boot_args"
        case initrdPath = "initrd_path"
    }

    init(from decoder: any Decoder) throws {
        try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        kernelImagePath = try container.decode(String.self, forKey: .kernelImagePath)
        bootArgs = try BodyKeys.optional(container, .bootArgs, String.self)
        initrdPath = try BodyKeys.optional(container, .initrdPath, String.self)
    }
}

/// `PUT /drives/{drive_id}`: Firecracker's `Drive`, the fields a file-backed virtio-blk disk has.
struct DriveBody: Decodable {
    var driveID: String
    var pathOnHost: String
    var isRootDevice: Bool
    var isReadOnly: Bool

    enum CodingKeys: String, CodingKey, CaseIterable {
        case driveID = "drive_id"
        case pathOnHost = "path_on_host"
        case isRootDevice = "is_root_device"
        case isReadOnly = "is_read_only"
    }

    init(from decoder: any Decoder) throws {
        try BodyKeys.check(
            decoder, allowed: CodingKeys.allCases.map(\.rawValue),
            unsupported: ["partuuid", "cache_type", "rate_limiter", "io_engine", "socket"])
        let container = try decoder.container(keyedBy: CodingKeys.self)
        driveID = try container.decode(String.self, forKey: .driveID)
        pathOnHost = try container.decode(String.self, forKey: .pathOnHost)
        isRootDevice = try container.decode(Bool.self, forKey: .isRootDevice)
        isReadOnly = try BodyKeys.optional(container, .isReadOnly, Bool.self) ?? false
    }
}

/// `PUT /network-interfaces/{iface_id}`: Firecracker's `NetworkInterface`, a host tap device.
struct NetworkInterfaceBody: Decodable {
    var ifaceID: String
    var hostDevName: String
    var guestMAC: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case ifaceID = "iface_id"
        case hostDevName = "host_dev_name"
        case guestMAC = "guest_mac"
    }

    init(from decoder: any Decoder) throws {
        try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), unsupported: ["rx_rate_limiter", "tx_rate_limiter"])
        let container = try decoder.container(keyedBy: CodingKeys.self)
        ifaceID = try container.decode(String.self, forKey: .ifaceID)
        hostDevName = try container.decode(String.self, forKey: .hostDevName)
        guestMAC = try BodyKeys.optional(container, .guestMAC, String.self)
    }
}

/// A body that cannot be used, worded for the client.
struct BodyError: Error {
    var message: String
}

enum BodyKeys {
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Refuses a key the body does not have (Codable would ignore it).
    static func check(_ decoder: any Decoder, allowed: [String], unsupported: [String] = []) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        for key in container.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) where !allowed.contains(key.stringValue) {
            if unsupported.contains(key.stringValue) {
                throw BodyError(message: "field '\(key.stringValue)' is not supported by swiftkvm; leave it out")
            }
            throw BodyError(message: "unknown field '\(key.stringValue)' (this body takes: \(allowed.joined(separator: ", ")))")
        }
    }

    /// A string field that must be one of an enum's raw values.
    static func choice<Keys: CodingKey, Choice: RawRepresentable & CaseIterable>(
        _ container: KeyedDecodingContainer<Keys>, _ key: Keys, _ type: Choice.Type
    ) throws -> Choice where Choice.RawValue == String {
        let text = try container.decode(String.self, forKey: key)
        guard let value = Choice(rawValue: text) else {
            throw BodyError(
                message: "field '\(key.stringValue)' is '\(text)': it must be one of \(Choice.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
        }
        return value
    }

    /// An optional field: absent is nil, but an explicit `null` is refused (the document gives
    /// each field a type, and null is none of them).
    static func optional<Keys: CodingKey, Value: Decodable>(_ container: KeyedDecodingContainer<Keys>, _ key: Keys, _ type: Value.Type) throws -> Value? {
        guard container.contains(key) else { return nil }
        if try container.decodeNil(forKey: key) {
            throw BodyError(message: "field '\(key.stringValue)' must be \(describe(type)), not null")
        }
        return try container.decode(type, forKey: key)
    }

    /// An integer field. Foundation's decoder throws an internal error for a number that is not a
    /// 64-bit integer (`2.5`, `1e30`), which reaches the caller as "not valid JSON" with no field;
    /// this names the field.
    static func integer<Keys: CodingKey>(_ container: KeyedDecodingContainer<Keys>, _ key: Keys) throws -> Int {
        do {
            return try container.decode(Int.self, forKey: key)
        } catch let error as DecodingError {
            throw error
        } catch {
            throw BodyError(message: "field '\(key.stringValue)' must be an integer (a whole number that fits in 64 bits)")
        }
    }

    /// Decodes a request body, turning every failure into a sentence that names the field.
    static func decode<Body: Decodable>(_ type: Body.Type, from bytes: [UInt8]) throws(BodyError) -> Body {
        guard !bytes.isEmpty else { throw BodyError(message: "this request needs a JSON object as its body") }
        do {
            return try JSONDecoder().decode(Body.self, from: Data(bytes))
        } catch let error as BodyError {
            throw error
        } catch let error as DecodingError {
            throw BodyError(message: describe(error))
        } catch {
            throw BodyError(message: "the body could not be read: \(error)")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func field(_ path: [any CodingKey]) -> String { path.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .typeMismatch(let type, let context):
            if context.codingPath.isEmpty { return "the body must be a JSON object" }
            return "field '\(field(context.codingPath))' must be \(describe(type))"
        case .valueNotFound(let type, let context):
            if context.codingPath.isEmpty { return "the body must be a JSON object" }
            return "field '\(field(context.codingPath))' must be \(describe(type)), not null"
        case .keyNotFound(let key, let context):
            return "missing field '\(field(context.codingPath + [key]))'"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty { return "the body is not valid JSON" }
            return "field '\(field(context.codingPath))' has a value that does not fit: \(context.debugDescription)"
        @unknown default:
            return "the body could not be read"
        }
    }

    static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is UInt64.Type: "an integer"
        case is Bool.Type: "true or false"
        case is String.Type: "a string"
        default: "a JSON object"
        }
    }
}
