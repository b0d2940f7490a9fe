import FoundationEssentials

/// `PUT /snapshot/create`: Firecracker's `SnapshotCreateParams`. Only full snapshots exist here
/// (`snapshot_type` "Full", the default); a diff snapshot needs dirty-page tracking, which
/// swiftkvm does not have.
public struct SnapshotCreateRequest: Decodable, Equatable, Sendable {
    /// Where the state file goes (vCPUs, devices, configuration).
    public var snapshotPath: String
    /// Where guest RAM goes.
    public var memFilePath: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case snapshotType = "snapshot_type"
        case snapshotPath = "snapshot_path"
        case memFilePath = "mem_file_path"
    }

    public init(snapshotPath: String, memFilePath: String) {
        self.snapshotPath = snapshotPath
        self.memFilePath = memFilePath
    }

    public init(from decoder: any Decoder) throws {
        try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), unsupported: ["version"])
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let type = try BodyKeys.optional(container, .snapshotType, String.self), type != "Full" {
            throw BodyError(message: "snapshot_type '\(type)' is not supported: swiftkvm takes \"Full\" snapshots only (no dirty-page tracking for \"Diff\")")
        }
        snapshotPath = try container.decode(String.self, forKey: .snapshotPath)
        memFilePath = try container.decode(String.self, forKey: .memFilePath)
        guard !snapshotPath.isEmpty else { throw BodyError(message: "snapshot_path is empty: give the path of the state file to write") }
        guard !memFilePath.isEmpty else { throw BodyError(message: "mem_file_path is empty: give the path of the memory file to write") }
        guard snapshotPath != memFilePath else { throw BodyError(message: "snapshot_path and mem_file_path are the same file") }
    }
}

/// `PUT /snapshot/load`: Firecracker's `SnapshotLoadParams`, on a VMM started empty. The memory
/// backend is a file (mapped `MAP_PRIVATE`). Firecracker's deprecated `mem_file_path` is refused
/// by name: use `mem_backend`.
public struct SnapshotLoadRequest: Decodable, Equatable, Sendable {
    public var snapshotPath: String
    public var memoryPath: String
    /// Run the guest at once (true), or leave it paused for `PATCH /vm` (false, the default).
    public var resumeVM: Bool

    enum CodingKeys: String, CodingKey, CaseIterable {
        case snapshotPath = "snapshot_path"
        case memBackend = "mem_backend"
        case enableDiffSnapshots = "enable_diff_snapshots"
        case trackDirtyPages = "track_dirty_pages"
        case resumeVM = "resume_vm"
    }

    struct Backend: Decodable {
        var path: String

        enum CodingKeys: String, CodingKey, CaseIterable {
            case backendType = "backend_type"
            case backendPath = "backend_path"
        }

        enum Kind: String, CaseIterable { case file = "File", uffd = "Uffd" }

        init(from decoder: any Decoder) throws {
            try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue))
            let container = try decoder.container(keyedBy: CodingKeys.self)
            if try BodyKeys.choice(container, .backendType, Kind.self) == .uffd {
                throw BodyError(message: "mem_backend.backend_type 'Uffd' is not supported: use \"File\" (the file is mapped MAP_PRIVATE)")
            }
            path = try container.decode(String.self, forKey: .backendPath)
        }
    }

    public init(snapshotPath: String, memoryPath: String, resumeVM: Bool) {
        self.snapshotPath = snapshotPath
        self.memoryPath = memoryPath
        self.resumeVM = resumeVM
    }

    public init(from decoder: any Decoder) throws {
        try BodyKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), unsupported: ["network_overrides", "mem_file_path"])
        let container = try decoder.container(keyedBy: CodingKeys.self)
        snapshotPath = try container.decode(String.self, forKey: .snapshotPath)
        guard let backend = try BodyKeys.optional(container, .memBackend, Backend.self) else {
            throw BodyError(message: "mem_backend is missing: give {\"backend_type\": \"File\", \"backend_path\": …}")
        }
        memoryPath = backend.path
        if try BodyKeys.optional(container, .enableDiffSnapshots, Bool.self) == true {
            throw BodyError(message: "enable_diff_snapshots: swiftkvm takes full snapshots only; leave it false")
        }
        if try BodyKeys.optional(container, .trackDirtyPages, Bool.self) == true {
            throw BodyError(message: "track_dirty_pages: swiftkvm does not track dirty pages; leave it false")
        }
        resumeVM = try BodyKeys.optional(container, .resumeVM, Bool.self) ?? false
        guard !snapshotPath.isEmpty else { throw BodyError(message: "snapshot_path is empty: give the path of a state file") }
        guard !memoryPath.isEmpty else { throw BodyError(message: "the memory file's path is empty") }
    }
}
