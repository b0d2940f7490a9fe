import VMConfig

/// The endpoints: one request in, one response out, the controller called on the way. Pure apart
/// from the controller, so tests call it without a socket. docs/openapi.yaml describes each route
/// exactly as it is answered here.
public struct APIRouter: Sendable {
    public let controller: any VMController

    public init(controller: any VMController) {
        self.controller = controller
    }

    /// The paths and the methods each takes (for 404 against 405, and the `Allow` field).
    enum Route {
        case instanceInfo, vm, vmConfig, actions, machineConfig, bootSource, stats, snapshotCreate, snapshotLoad
        case drive(String), networkInterface(String)

        var methods: [HTTPMethod] {
            switch self {
            case .instanceInfo, .vmConfig, .stats: [.get]
            case .vm: [.patch]
            case .actions, .bootSource, .drive, .networkInterface, .snapshotCreate, .snapshotLoad: [.put]
            case .machineConfig: [.get, .put]
            }
        }
    }

    public func respond(to request: HTTPRequest) -> HTTPResponse {
        let route: Route
        switch Self.route(request.path) {
        case .found(let found): route = found
        case .answer(let response): return response
        }
        guard route.methods.contains(request.method) else {
            let allowed = route.methods.map(\.rawValue).joined(separator: ", ")
            return .fault(
                .methodNotAllowed, "\(request.method.rawValue) is not allowed on \(request.path): use \(allowed)", headers: ["Allow": allowed])
        }
        do throws(ControllerError) {
            return try handle(route, request)
        } catch {
            return .fault(error.status, error.description)
        }
    }

    /// Splits the path into a route; unknown paths and bad ids are answered here.
    enum Lookup {
        case found(Route)
        /// No route: answer this (404, or 400 for a bad id).
        case answer(HTTPResponse)
    }

    static func route(_ path: String) -> Lookup {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        let notFound = HTTPResponse.fault(.notFound, "no such endpoint: \(path) (docs/openapi.yaml lists them)")
        switch segments {
        case [""]: return .found(.instanceInfo)
        case ["vm"]: return .found(.vm)
        case ["vm", "config"]: return .found(.vmConfig)
        case ["actions"]: return .found(.actions)
        case ["machine-config"]: return .found(.machineConfig)
        case ["boot-source"]: return .found(.bootSource)
        case ["stats"]: return .found(.stats)
        case ["snapshot", "create"]: return .found(.snapshotCreate)
        case ["snapshot", "load"]: return .found(.snapshotLoad)
        case let parts where parts.count == 2 && (parts[0] == "drives" || parts[0] == "network-interfaces"):
            guard let id = percentDecoded(parts[1]), isIdentifier(id) else {
                return .answer(.fault(.badRequest, "'\(parts[1])' is not a valid id: use 1 to 64 letters, digits, '_' or '-'"))
            }
            return .found(parts[0] == "drives" ? .drive(id) : .networkInterface(id))
        default: return .answer(notFound)
        }
    }

    private func handle(_ route: Route, _ request: HTTPRequest) throws(ControllerError) -> HTTPResponse {
        switch (route, request.method) {
        case (.instanceInfo, _):
            return .json(controller.instanceInfo())
        case (.stats, _):
            return .json(controller.statistics())
        case (.vmConfig, _):
            if let configuration = controller.runningConfiguration() { return .json(configuration) }
            let draft = controller.draft()
            guard draft.boot != nil else {
                throw .notFound("the VM has no configuration yet: PUT /boot-source first")
            }
            return .json(try draft.makeConfiguration())
        case (.vm, _):
            let body = try decode(VMStateBody.self, request)
            switch body.state {
            case .paused: try controller.pause()
            case .resumed: try controller.resume()
            }
            return .noContent
        case (.actions, _):
            let body = try decode(ActionBody.self, request)
            switch body.action {
            case .instanceStart:
                let info = controller.instanceInfo()
                guard info.state == .notStarted else { throw .wrongState("InstanceStart", current: info.state, needs: [.notStarted]) }
                try controller.start(try controller.draft().makeConfiguration())
            case .sendCtrlAltDel: try controller.perform(.sendCtrlAltDel)
            case .powerButton: try controller.perform(.powerButton)
            case .hardReset: try controller.perform(.hardReset)
            case .stop: try controller.perform(.stop)
            case .kill: try controller.perform(.kill)
            }
            return .noContent
        case (.machineConfig, .get):
            let draft = controller.runningConfiguration().map(ConfigurationDraft.init) ?? controller.draft()
            return .json(MachineConfigBody(vcpuCount: draft.cpus, memSizeMib: draft.effectiveMemoryBytes >> 20))
        case (.machineConfig, _):
            let body = try decode(MachineConfigBody.self, request)
            var draft = try draftBeforeStart("PUT /machine-config")
            guard body.vcpuCount >= 1, body.vcpuCount <= VMConfiguration.maximumCPUs else {
                throw .invalid("vcpu_count \(body.vcpuCount) is not valid: from 1 to \(VMConfiguration.maximumCPUs)")
            }
            let (bytes, overflow) = body.memSizeMib.multipliedReportingOverflow(by: 1 << 20)
            guard body.memSizeMib >= 1, !overflow else { throw .invalid("mem_size_mib \(body.memSizeMib) is not valid: a positive number of MiB") }
            guard !body.smt else { throw .invalid("smt: swiftkvm gives each vCPU its own core; simultaneous multithreading cannot be enabled") }
            guard !body.trackDirtyPages else { throw .invalid("track_dirty_pages: swiftkvm does not track dirty pages; leave it false") }
            if let template = body.cpuTemplate, template != "None" {
                throw .invalid("cpu_template '\(template)' is not supported: swiftkvm has no CPU templates (use \"None\" or leave it out)")
            }
            guard body.hugePages == "None" else { throw .invalid("huge_pages '\(body.hugePages)' is not supported: use \"None\"") }
            draft.cpus = body.vcpuCount
            draft.memoryBytes = bytes
            try commit(draft)
            return .noContent
        case (.bootSource, _):
            let body = try decode(BootSourceBody.self, request)
            var draft = try draftBeforeStart("PUT /boot-source")
            guard !body.kernelImagePath.isEmpty else { throw .invalid("kernel_image_path is empty: give the path of a bzImage") }
            if let initrd = body.initrdPath, initrd.isEmpty { throw .invalid("initrd_path is empty: give the path of an initramfs, or leave it out") }
            draft.boot = .linux(
                LinuxBootSource(kernel: body.kernelImagePath, initrd: body.initrdPath, commandLine: body.bootArgs ?? LinuxBootSource.defaultCommandLine))
            try commit(draft)
            return .noContent
        case (.drive(let id), _):
            let body = try decode(DriveBody.self, request)
            guard body.driveID == id else { throw .invalid("drive_id '\(body.driveID)' in the body is not '\(id)' of the path") }
            var draft = try draftBeforeStart("PUT /drives/\(id)")
            guard !body.pathOnHost.isEmpty else { throw .invalid("path_on_host is empty: give the path of a disk image") }
            if body.isRootDevice, let root = draft.rootDriveID, root != id {
                throw .invalid("drive '\(root)' is the root device already: only one drive can have is_root_device true")
            }
            let disk = DiskConfig(id: id, path: body.pathOnHost, readOnly: body.isReadOnly)
            if let index = draft.disks.firstIndex(where: { $0.id == id }) {
                draft.disks[index] = disk
            } else {
                draft.disks.append(disk)
            }
            if body.isRootDevice {
                draft.rootDriveID = id
            } else if draft.rootDriveID == id {
                draft.rootDriveID = nil
            }
            try commit(draft)
            return .noContent
        case (.snapshotCreate, _):
            try controller.createSnapshot(try decode(SnapshotCreateRequest.self, request))
            return .noContent
        case (.snapshotLoad, _):
            let body = try decode(SnapshotLoadRequest.self, request)
            let state = controller.instanceInfo().state
            guard state == .notStarted else { throw .wrongState("PUT /snapshot/load", current: state, needs: [.notStarted]) }
            try controller.loadSnapshot(body)
            return .noContent
        case (.networkInterface(let id), _):
            let body = try decode(NetworkInterfaceBody.self, request)
            guard body.ifaceID == id else { throw .invalid("iface_id '\(body.ifaceID)' in the body is not '\(id)' of the path") }
            var draft = try draftBeforeStart("PUT /network-interfaces/\(id)")
            let interface = NetworkInterfaceConfig(id: id, backend: .tap(name: body.hostDevName), mac: body.guestMAC)
            if let index = draft.networkInterfaces.firstIndex(where: { $0.id == id }) {
                draft.networkInterfaces[index] = interface
            } else {
                draft.networkInterfaces.append(interface)
            }
            try commit(draft)
            return .noContent
        }
    }

    private func decode<Body: Decodable>(_ type: Body.Type, _ request: HTTPRequest) throws(ControllerError) -> Body {
        do {
            return try BodyKeys.decode(type, from: request.body)
        } catch {
            throw .invalid(error.message)
        }
    }

    /// The draft, or 409 once the VM has started (Firecracker refuses pre-boot changes after start too).
    private func draftBeforeStart(_ operation: String) throws(ControllerError) -> ConfigurationDraft {
        let state = controller.instanceInfo().state
        guard state == .notStarted else { throw .wrongState(operation, current: state, needs: [.notStarted]) }
        return controller.draft()
    }

    private func commit(_ draft: ConfigurationDraft) throws(ControllerError) {
        try draft.validate()
        try controller.setDraft(draft)
    }

    /// Firecracker's ids: 1 to 64 of `[A-Za-z0-9_-]` (as `VMConfiguration.validate()` checks disk and NIC ids).
    static func isIdentifier(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count)
            && id.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                    UInt8(ascii: "_"), UInt8(ascii: "-"):
                    true
                default: false
                }
            }
    }

    /// `%XX` escapes decoded (RFC 3986 §2.1); nil for a broken escape or bytes that are not UTF-8.
    static func percentDecoded(_ text: String) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
