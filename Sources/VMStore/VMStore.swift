import FoundationEssentials
import Glibc
import VMConfig

/// Why the store refused: one line that says what is wrong and what to do.
public struct StoreError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable { case badName, notFound, exists, running, system }
    public let kind: Kind
    public let description: String

    public init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }

    static func system(_ call: String, _ path: String, _ code: Int32 = errno) -> StoreError {
        StoreError(.system, "\(path): \(call) failed: \(String(cString: strerror(code))) (errno \(code))")
    }
}

/// Where kept VMs live: a folder per VM for what lasts (its definition, state, console and event
/// logs) and one for what lasts only while its VMM runs (the lock and the sockets).
///
/// Root uses `/var/lib/swiftkvm` and `/run/swiftkvm`; other users `$XDG_DATA_HOME/swiftkvm`
/// (`~/.local/share/swiftkvm`) and `$XDG_RUNTIME_DIR/swiftkvm` (the data folder when that is unset).
/// `SWIFTKVM_HOME` overrides both: each VM is then the one folder `$SWIFTKVM_HOME/NAME`.
public struct VMStore: Sendable {
    public let dataRoot: String
    public let runtimeRoot: String

    public init(dataRoot: String, runtimeRoot: String) {
        self.dataRoot = dataRoot
        self.runtimeRoot = runtimeRoot
    }

    /// The store this process's user and environment select.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment, isRoot: Bool = getuid() == 0) -> VMStore {
        if let home = environment["SWIFTKVM_HOME"], !home.isEmpty {
            let root = home.hasPrefix("/") ? home : FileManager.default.currentDirectoryPath + "/" + home
            return VMStore(dataRoot: root, runtimeRoot: root)
        }
        if isRoot { return VMStore(dataRoot: "/var/lib/swiftkvm", runtimeRoot: "/run/swiftkvm") }
        let userHome = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        let data = (environment["XDG_DATA_HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? userHome + "/.local/share") + "/swiftkvm"
        let runtime = environment["XDG_RUNTIME_DIR"].flatMap { $0.hasPrefix("/") ? $0 + "/swiftkvm" : nil } ?? data
        return VMStore(dataRoot: data, runtimeRoot: runtime)
    }

    /// The folder of VM `name` (checked), whether or not it exists.
    public func folder(_ name: String) throws(StoreError) -> VMFolder {
        if let problem = VMName.problem(with: name) { throw StoreError(.badName, problem) }
        return VMFolder(name: name, data: dataRoot + "/" + name, runtime: runtimeRoot + "/" + name)
    }

    /// The folder of an existing VM; `.notFound` with what to do otherwise.
    public func existing(_ name: String) throws(StoreError) -> VMFolder {
        let folder = try folder(name)
        guard access(folder.definitionPath, F_OK) == 0 else {
            throw StoreError(.notFound, "there is no VM named '\(name)': 'swiftkvm list --all' shows the VMs, 'swiftkvm create \(name) …' makes it")
        }
        return folder
    }

    /// Defines VM `name`. The name is reserved atomically (mkdir of its folder): of two creates of
    /// one name exactly one succeeds; the definition is written to a temporary file and renamed.
    @discardableResult
    public func create(_ name: String, configuration: VMConfiguration) throws(StoreError) -> VMFolder {
        let folder = try folder(name)
        try Self.makeDirectories(dataRoot)
        if mkdir(folder.dataPath, 0o700) != 0 {
            if errno == EEXIST {
                throw StoreError(.exists, "a VM named '\(name)' exists already: choose another name, or 'swiftkvm rm \(name)' first")
            }
            throw .system("mkdir", folder.dataPath)
        }
        do {
            var named = configuration
            named.name = name
            try Self.writeAtomically(folder.definitionPath, try Self.encode(named))
        } catch {
            _ = rmdir(folder.dataPath)
            throw error
        }
        return folder
    }

    /// Names of the defined VMs, sorted.
    public func names() -> [String] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: dataRoot) else { return [] }
        return entries.filter { VMName.isValid($0) && access(dataRoot + "/" + $0 + "/" + VMFolder.definitionFile, F_OK) == 0 }.sorted()
    }

    /// Forgets VM `name`: its folders and all in them. Refused while its VMM runs. Disk images are
    /// never touched (they are not in the folder).
    public func remove(_ name: String) throws(StoreError) {
        let folder = try existing(name)
        try Self.makeDirectories(folder.runtimePath)
        guard let lock = VMLock.acquire(folder.lockPath) else {
            let pid = (try? folder.readRecord())?.pid.map { " (pid \($0))" } ?? ""
            throw StoreError(.running, "'\(name)' is running\(pid): 'swiftkvm stop \(name)' first")
        }
        defer { lock.release() }
        // The definition first: from here on nobody can start it.
        guard unlink(folder.definitionPath) == 0 else { throw .system("unlink", folder.definitionPath) }
        for path in [folder.dataPath, folder.runtimePath] where access(path, F_OK) == 0 {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    static func encode<Value: Encodable>(_ value: Value) throws(StoreError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do { return Array(try encoder.encode(value)) + [0x0A] } catch { throw StoreError(.system, "cannot encode: \(error)") }
    }

    /// `mkdir -p`, mode 0700 for folders it makes.
    public static func makeDirectories(_ path: String) throws(StoreError) {
        var built = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, 0o700) != 0, errno != EEXIST { throw .system("mkdir", built) }
        }
    }

    /// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
    /// reader sees the old file or the new one, never half of one.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8]) throws(StoreError) {
        let temporary = path + ".tmp.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .system("open", temporary) }
        var done = 0
        while done < bytes.count {
            let result = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
            if result < 0, errno == EINTR { continue }
            guard result > 0 else {
                let code = errno
                close(fd)
                unlink(temporary)
                throw .system("write", temporary, code)
            }
            done += result
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw .system("rename", path, code)
        }
    }

    /// A whole small file, or nil when it is not there or larger than `limit`.
    public static func read(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while result.count <= limit {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            result += chunk[0..<count]
        }
        return result.count <= limit ? result : nil
    }
}

/// One kept VM's files.
public struct VMFolder: Sendable, Equatable {
    public let name: String
    /// What lasts: definition, state, logs.
    public let dataPath: String
    /// What lasts while the VMM runs: lock and sockets (the same folder under `SWIFTKVM_HOME`).
    public let runtimePath: String

    public static let definitionFile = "vm.json"

    public init(name: String, data: String, runtime: String) {
        self.name = name
        dataPath = data
        runtimePath = runtime
    }

    public var definitionPath: String { dataPath + "/" + Self.definitionFile }
    public var statePath: String { dataPath + "/state.json" }
    public var consoleLogPath: String { dataPath + "/console.log" }
    public var eventLogPath: String { dataPath + "/events.log" }
    /// The VMM's own standard output and error (what it says before and after the guest).
    public var vmmLogPath: String { dataPath + "/vmm.log" }
    public var lockPath: String { runtimePath + "/lock" }
    public var controlSocketPath: String { runtimePath + "/control.sock" }
    public var consoleSocketPath: String { runtimePath + "/console.sock" }

    public func definition() throws(StoreError) -> VMConfiguration {
        guard let bytes = VMStore.read(definitionPath) else {
            throw StoreError(.notFound, "\(definitionPath) cannot be read: was '\(name)' removed meanwhile?")
        }
        do {
            let configuration = try JSONDecoder().decode(VMConfiguration.self, from: Data(bytes))
            try configuration.validate()
            return configuration
        } catch {
            throw StoreError(.system, "\(definitionPath) is not a valid VM definition: \(error)")
        }
    }

    public func readRecord() throws(StoreError) -> VMRecord {
        guard let bytes = VMStore.read(statePath) else { return VMRecord() }
        do { return try JSONDecoder().decode(VMRecord.self, from: Data(bytes)) } catch {
            throw StoreError(.system, "\(statePath) is not a state file: \(error)")
        }
    }

    /// Only the holder of the lock writes the state file.
    public func writeRecord(_ record: VMRecord) throws(StoreError) {
        try VMStore.writeAtomically(statePath, try VMStore.encode(record))
    }

    /// Whether a VMM holds this VM's lock now.
    public var isLocked: Bool { VMLock.isHeld(lockPath) }

    /// Sockets left by a VMM that died; call only while holding the lock.
    public func removeStaleSockets() {
        unlink(controlSocketPath)
        unlink(consoleSocketPath)
    }

    /// The VM's state as a client sees it, the state file reconciled with the lock: a VM whose
    /// file says it runs but whose lock is free lost its VMM. The first client to see that
    /// (taking the lock) records it — an event `crashed`, the last stop `vmm-died`, stale sockets
    /// removed — and is told `.crashed`; later ones see `stopped` with that reason.
    public func status() -> VMStatus {
        let record = (try? readRecord()) ?? VMRecord()
        if isLocked { return VMStatus(state: VMRecord.State(rawValue: record.state) ?? .starting, record: record, crashedNow: false) }
        guard record.isLive else { return VMStatus(state: .stopped, record: record, crashedNow: false) }
        guard let lock = VMLock.acquire(lockPath) else {
            // A VMM took the lock between the two looks: it is starting.
            return VMStatus(state: .starting, record: (try? readRecord()) ?? record, crashedNow: false)
        }
        defer { lock.release() }
        var current = (try? readRecord()) ?? record
        guard current.isLive else { return VMStatus(state: .stopped, record: current, crashedNow: false) }
        let pid = current.pid.map { " (pid \($0))" } ?? ""
        current.state = VMRecord.State.stopped.rawValue
        current.lastStop = StopRecord(reason: .vmmDied, detail: "the VMM\(pid) died without stopping the VM", status: nil)
        current.pid = nil
        try? writeRecord(current)
        removeStaleSockets()
        EventLog(path: eventLogPath).append("crashed", "the VMM\(pid) died without stopping the VM")
        return VMStatus(state: .crashed, record: current, crashedNow: true)
    }
}

/// What a client sees of a VM: `state` (running, paused, starting, stopped, or crashed once).
public struct VMStatus: Sendable {
    public let state: VMRecord.State
    public let record: VMRecord
    /// This look found the VMM gone and recorded it.
    public let crashedNow: Bool

    public var isRunning: Bool { state == .running || state == .paused || state == .starting }
}
