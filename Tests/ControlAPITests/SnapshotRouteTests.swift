import Foundation
import Testing

@testable import ControlAPI
import ControlAPIMock
import VMConfig

/// `PUT /snapshot/create` and `/snapshot/load`: Firecracker's bodies, decoded strictly, and the
/// states each needs (on the mock controller: no KVM).
@Suite struct SnapshotRouteTests {
    static func put(_ router: APIRouter, _ path: String, _ body: String) -> (status: Int, message: String) {
        let request = HTTPRequest(method: .put, path: path, query: nil, minorVersion: 1, headers: HTTPHeaders(), body: Array(body.utf8))
        let response = router.respond(to: request)
        let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any]
        return (response.status.code, object?["fault_message"] as? String ?? "")
    }

    static let create = #"{"snapshot_type": "Full", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#
    static let load = #"{"snapshot_path": "/tmp/s", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/m"}, "resume_vm": true}"#

    @Test func createNeedsAPausedVM() throws {
        let controller = MockVMController()
        let router = APIRouter(controller: controller)
        #expect(Self.put(router, "/snapshot/create", Self.create).status == 409)
        try controller.start(VMConfiguration(boot: .firmware(FirmwareBootSource(path: "/f.bin", mode: "long"))))
        #expect(Self.put(router, "/snapshot/create", Self.create).status == 409)
        try controller.pause()
        #expect(Self.put(router, "/snapshot/create", Self.create).status == 204)
    }

    @Test func loadNeedsAVMMStartedEmpty() throws {
        let controller = MockVMController()
        let router = APIRouter(controller: controller)
        #expect(Self.put(router, "/snapshot/load", Self.load).status == 204)
        #expect(controller.instanceInfo().state == .running)
        #expect(Self.put(router, "/snapshot/load", Self.load).status == 409)
    }

    @Test(arguments: [
        (#"{"snapshot_type": "Diff", "snapshot_path": "/a", "mem_file_path": "/b"}"#, "'Diff' is not supported"),
        (#"{"snapshot_path": "/a"}"#, "missing field 'mem_file_path'"),
        (#"{"snapshot_path": "", "mem_file_path": "/b"}"#, "snapshot_path is empty"),
        (#"{"snapshot_path": "/a", "mem_file_path": "/a"}"#, "the same file"),
        (#"{"snapshot_path": "/a", "mem_file_path": "/b", "version": "1.0"}"#, "'version' is not supported"),
        (#"{"snapshot_path": "/a", "mem_file_path": "/b", "colour": 1}"#, "unknown field 'colour'"),
    ])
    func badCreateBodiesAreRefused(body: String, words: String) {
        let answer = Self.put(APIRouter(controller: MockVMController()), "/snapshot/create", body)
        #expect(answer.status == 400)
        #expect(answer.message.contains(words), "\(answer.message)")
    }

    @Test(arguments: [
        (#"{"snapshot_path": "/a", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#, "'Uffd' is not supported"),
        (#"{"snapshot_path": "/a"}"#, "mem_backend is missing"),
        (#"{"snapshot_path": "/a", "mem_file_path": "/b"}"#, "'mem_file_path' is not supported"),
        (#"{"snapshot_path": "/a", "mem_backend": {"backend_type": "File", "backend_path": "/b"}, "enable_diff_snapshots": true}"#, "full snapshots only"),
        (#"{"snapshot_path": "/a", "mem_backend": {"backend_type": "File", "backend_path": "/b", "x": 1}}"#, "unknown field 'x'"),
        (#"{"snapshot_path": "/a", "mem_backend": {"backend_type": "File", "backend_path": "/b"}, "resume_vm": "yes"}"#, "resume_vm"),
    ])
    func badLoadBodiesAreRefused(body: String, words: String) {
        let answer = Self.put(APIRouter(controller: MockVMController()), "/snapshot/load", body)
        #expect(answer.status == 400)
        #expect(answer.message.contains(words), "\(answer.message)")
    }
}
