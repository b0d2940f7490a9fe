import Foundation
import Testing
import VMConfig

@testable import ControlAPI
import ControlAPIMock

#if canImport(Glibc)
import Glibc
#endif

/// The API over a real Unix socket, answered by `MockVMController`.
@Suite struct ControlServerTests {
    @Test func everyEndpointThroughAWholeLife() throws {
        let api = try TestServer("life")
        defer { api.finish() }
        var response = try api.request("GET", "/")
        #expect(response.status == 200)
        #expect(response.headers["content-type"] == "application/json")
        #expect(response.json?["state"] as? String == "Not started")
        #expect(response.json?["app_name"] as? String == "swiftkvm")
        #expect(response.json?["boot_count"] as? Int == 0)
        #expect(response.json?["id"] as? String == "mock-vm")
        #expect(response.json?["vmm_version"] is String)

        #expect(try api.request("GET", "/vm/config").status == 404)
        #expect(try api.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#).fault?.contains("PUT /boot-source") == true)

        response = try api.request("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 64, "smt": false, "cpu_template": "None"}"#)
        #expect(response.status == 204)
        #expect(response.body.isEmpty && response.headers["content-length"] == nil)
        response = try api.request("GET", "/machine-config")
        #expect(response.json?["vcpu_count"] as? Int == 2)
        #expect(response.json?["mem_size_mib"] as? Int == 64)
        #expect(response.json?["smt"] as? Bool == false)

        #expect(try api.request("PUT", "/boot-source", #"{"kernel_image_path": "/k/bzImage", "initrd_path": "/k/initrd", "boot_args": "console=ttyS0"}"#).status == 204)
        #expect(try api.request("PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "/d/data.img", "is_root_device": false, "is_read_only": true}"#).status == 204)
        #expect(try api.request("PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "/d/root.img", "is_root_device": true}"#).status == 204)
        #expect(try api.request("PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "52:54:00:12:34:56"}"#).status == 204)
        // The same id again replaces the device.
        #expect(try api.request("PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "tap1"}"#).status == 204)

        response = try api.request("GET", "/vm/config")
        #expect(response.status == 200)
        let draft = try JSONDecoder().decode(VMConfiguration.self, from: Data(response.body))
        #expect(draft.cpus == 2)
        #expect(draft.memoryBytes == 64 << 20)
        #expect(draft.boot == .linux(LinuxBootSource(kernel: "/k/bzImage", initrd: "/k/initrd", commandLine: "console=ttyS0 root=/dev/vda rw")))
        #expect(draft.disks == [DiskConfig(id: "rootfs", path: "/d/root.img"), DiskConfig(id: "data", path: "/d/data.img", readOnly: true)])
        #expect(draft.networkInterfaces == [NetworkInterfaceConfig(id: "eth0", backend: .tap(name: "tap1"))])

        #expect(try api.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#).status == 204)
        #expect(try api.request("GET", "/").json?["state"] as? String == "Running")
        #expect(try api.request("GET", "/").json?["boot_count"] as? Int == 1)
        #expect(api.controller.runningConfiguration() == draft)
        #expect(try JSONDecoder().decode(VMConfiguration.self, from: Data(api.request("GET", "/vm/config").body)) == draft)

        #expect(try api.request("PATCH", "/vm", #"{"state":"Paused"}"#).status == 204)
        #expect(try api.request("GET", "/").json?["state"] as? String == "Paused")
        #expect(try api.request("PATCH", "/vm", #"{"state":"Resumed"}"#).status == 204)
        #expect(try api.request("GET", "/").json?["state"] as? String == "Running")

        for action in ["SendCtrlAltDel", "PowerButton", "HardReset"] {
            #expect(try api.request("PUT", "/actions", "{\"action_type\":\"\(action)\"}").status == 204, "\(action)")
        }
        #expect(try api.request("GET", "/").json?["boot_count"] as? Int == 2)

        response = try api.request("GET", "/stats")
        #expect(response.status == 200)
        #expect(response.json?["boot_count"] as? Int == 2)
        #expect((response.json?["vcpus"] as? [Any])?.count == 2)
        #expect((response.json?["console"] as? [String: Any])?["bytes_dropped"] as? Int == 0)
        #expect(response.json?["uptime_seconds"] is Double)

        #expect(try api.request("PUT", "/actions", #"{"action_type":"Stop"}"#).status == 204)
        #expect(try api.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#).status == 204)
        #expect(try api.request("PUT", "/actions", #"{"action_type":"Kill"}"#).status == 204)
        #expect(api.controller.log == [
            "setDraft", "setDraft", "setDraft", "setDraft", "setDraft", "setDraft", "start", "pause", "resume",
            "SendCtrlAltDel", "PowerButton", "HardReset", "Stop", "start", "Kill",
        ])
    }

    @Test func eachWrongStateIsA409() throws {
        let api = try TestServer("states")
        defer { api.finish() }
        let notStarted: [(String, String, String)] = [
            ("PATCH", "/vm", #"{"state":"Paused"}"#), ("PATCH", "/vm", #"{"state":"Resumed"}"#),
            ("PUT", "/actions", #"{"action_type":"SendCtrlAltDel"}"#), ("PUT", "/actions", #"{"action_type":"PowerButton"}"#),
            ("PUT", "/actions", #"{"action_type":"HardReset"}"#), ("PUT", "/actions", #"{"action_type":"Stop"}"#),
            ("PUT", "/actions", #"{"action_type":"Kill"}"#),
        ]
        for (method, path, body) in notStarted {
            let response = try api.request(method, path, body)
            #expect(response.status == 409, "\(body) before start")
            #expect(response.fault?.contains("'Not started'") == true)
        }
        #expect(try api.request("PUT", "/boot-source", #"{"kernel_image_path":"/k"}"#).status == 204)
        #expect(try api.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#).status == 204)
        let running: [(String, String, String)] = [
            ("PUT", "/actions", #"{"action_type":"InstanceStart"}"#), ("PATCH", "/vm", #"{"state":"Resumed"}"#),
            ("PUT", "/boot-source", #"{"kernel_image_path":"/k2"}"#), ("PUT", "/machine-config", #"{"vcpu_count":1,"mem_size_mib":32}"#),
            ("PUT", "/drives/a", #"{"drive_id":"a","path_on_host":"/a","is_root_device":false}"#),
            ("PUT", "/network-interfaces/n", #"{"iface_id":"n","host_dev_name":"tap0"}"#),
        ]
        for (method, path, body) in running {
            #expect(try api.request(method, path, body).status == 409, "\(method) \(path) \(body) while running")
        }
        #expect(try api.request("PATCH", "/vm", #"{"state":"Paused"}"#).status == 204)
        #expect(try api.request("PATCH", "/vm", #"{"state":"Paused"}"#).status == 409)
        #expect(try api.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#).status == 409)
    }

    @Test func badBodiesAre400sThatNameTheField() throws {
        let api = try TestServer("bodies")
        defer { api.finish() }
        let cases: [(String, String, String?, String)] = [
            ("PUT", "/machine-config", #"{"vcpu_count": 2"#, "not valid JSON"),
            ("PUT", "/machine-config", #"[1, 2]"#, "must be a JSON object"),
            ("PUT", "/machine-config", #""text""#, "must be a JSON object"),
            ("PUT", "/machine-config", nil, "needs a JSON object"),
            ("PUT", "/machine-config", #"{"vcpu_count": "2", "mem_size_mib": 64}"#, "'vcpu_count' must be an integer"),
            ("PUT", "/machine-config", #"{"vcpu_count": 2.5, "mem_size_mib": 64}"#, "'vcpu_count'"),
            ("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": null}"#, "'mem_size_mib'"),
            ("PUT", "/machine-config", #"{"vcpu_count": 2}"#, "missing field 'mem_size_mib'"),
            ("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 64, "vcpus": 4}"#, "unknown field 'vcpus'"),
            ("PUT", "/machine-config", #"{"vcpu_count": 0, "mem_size_mib": 64}"#, "vcpu_count 0"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 0}"#, "mem_size_mib 0"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 9223372036854775807}"#, "mem_size_mib"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64, "smt": true}"#, "smt"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}"#, "track_dirty_pages"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}"#, "cpu_template"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}"#, "huge_pages"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64, "smt": "no"}"#, "'smt' must be true or false"),
            ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": null}"#, "'huge_pages' must be a string, not null"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "is_read_only": null}"#, "'is_read_only' must be true or false, not null"),
            ("PATCH", "/vm", #"{"state": "Frozen"}"#, "\"Paused\", \"Resumed\""),
            ("PATCH", "/vm", #"{"state": 1}"#, "'state' must be a string"),
            ("PUT", "/actions", #"{"action_type": "Reboot"}"#, "'action_type' is 'Reboot'"),
            ("PUT", "/actions", #"{"action_type": "InstanceStart", "when": "now"}"#, "unknown field 'when'"),
            ("PUT", "/boot-source", #"{"kernel_image_path": ""}"#, "kernel_image_path"),
            ("PUT", "/boot-source", #"{"kernel_image_path": 5}"#, "'kernel_image_path' must be a string"),
            ("PUT", "/drives/a", #"{"drive_id": "b", "path_on_host": "/a", "is_root_device": false}"#, "'b' in the body"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/a"}"#, "missing field 'is_root_device'"),
            ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "rate_limiter": {}}"#, "'rate_limiter' is not supported"),
            ("PUT", "/drives/a%2Fb", #"{"drive_id": "a/b", "path_on_host": "/a", "is_root_device": false}"#, "not a valid id"),
            ("PUT", "/drives/a%zz", #"{}"#, "not a valid id"),
            ("PUT", "/network-interfaces/n", #"{"iface_id": "n", "host_dev_name": "this-name-is-too-long"}"#, "network_interfaces[0].tap"),
            ("PUT", "/network-interfaces/n", #"{"iface_id": "n", "host_dev_name": "tap0", "guest_mac": "ff:ff:ff:ff:ff:ff"}"#, "unicast"),
        ]
        for (method, path, body, expected) in cases {
            let response = try api.request(method, path, body)
            #expect(response.status == 400, "\(path) \(body ?? "(none)")")
            #expect(response.fault?.contains(expected) == true, "\(body ?? "(none)"): \(response.fault ?? response.text)")
        }
        #expect(api.controller.log.isEmpty)
        // Only one root device.
        #expect(try api.request("PUT", "/drives/r1", #"{"drive_id":"r1","path_on_host":"/r1","is_root_device":true}"#).status == 204)
        #expect(try api.request("PUT", "/drives/r2", #"{"drive_id":"r2","path_on_host":"/r2","is_root_device":true}"#).status == 400)
    }

    @Test func controllerErrorsMapToTheirStatus() throws {
        let api = try TestServer("failures")
        defer { api.finish() }
        #expect(try api.request("PUT", "/boot-source", #"{"kernel_image_path":"/missing"}"#).status == 204)
        api.controller.failNextStart(with: .invalid("/missing: no such file"))
        var response = try api.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#)
        #expect(response.status == 400)
        #expect(response.fault == "/missing: no such file")
        api.controller.failNextStart(with: .internalFailure("KVM_CREATE_VM failed"))
        response = try api.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#)
        #expect(response.status == 500)
        #expect(response.fault == "KVM_CREATE_VM failed")
    }

    @Test func unknownPathsAre404AndWrongMethods405() throws {
        let api = try TestServer("routes")
        defer { api.finish() }
        for path in ["/nope", "/vm/", "/drives", "/drives/a/b", "//", "/machine-config/x"] {
            let response = try api.request("GET", path)
            #expect(response.status == 404, "\(path)")
            #expect(response.fault?.contains("no such endpoint") == true)
        }
        let wrong: [(String, String, String)] = [
            ("POST", "/", "GET"), ("DELETE", "/vm", "PATCH"), ("GET", "/actions", "PUT"), ("PATCH", "/machine-config", "GET, PUT"),
            ("GET", "/drives/a", "PUT"), ("HEAD", "/stats", "GET"), ("PUT", "/vm/config", "GET"),
        ]
        for (method, path, allowed) in wrong {
            let response = try api.request(method, path)
            #expect(response.status == 405, "\(method) \(path)")
            #expect(response.headers["allow"] == allowed)
        }
        // A method that is not HTTP at all: 405 from the parser, then the connection closes.
        let connection = try api.connection()
        defer { connection.close() }
        try connection.send("BREW /pot HTTP/1.1\r\n\r\n")
        #expect(try connection.readResponse().status == 405)
        #expect(try connection.isClosedByServer())
    }

    @Test func hugeBodiesAndHeadersAreRefusedAndTheConnectionClosed() throws {
        let api = try TestServer("limits")
        defer { api.finish() }
        var connection = try api.connection()
        try connection.send("PUT /machine-config HTTP/1.1\r\nContent-Length: \(2 << 20)\r\n\r\n{")
        var response = try connection.readResponse()
        #expect(response.status == 413)
        #expect(response.headers["connection"] == "close")
        #expect(try connection.isClosedByServer())
        connection.close()

        connection = try api.connection()
        try connection.send("GET / HTTP/1.1\r\nX-Big: " + String(repeating: "b", count: 20 << 10) + "\r\n\r\n")
        response = try connection.readResponse()
        #expect(response.status == 431)
        #expect(try connection.isClosedByServer())
        connection.close()

        // A body at the limit is read whole (and then refused as JSON, not as size).
        connection = try api.connection()
        defer { connection.close() }
        try connection.send(TestConnection.request("PUT", "/machine-config", String(repeating: " ", count: 1 << 20)))
        response = try connection.readResponse()
        #expect(response.status == 400)
        #expect(try api.request("GET", "/").status == 200)
    }

    /// curl sends `Expect: 100-continue` for bodies over 1 KiB and waits a second for the answer.
    @Test func expectContinueIsAnsweredBeforeTheBody() throws {
        let api = try TestServer("continue")
        defer { api.finish() }
        let connection = try api.connection()
        defer { connection.close() }
        let body = #"{"kernel_image_path": "/k", "boot_args": "\#(String(repeating: "x", count: 2000))"}"#
        try connection.send("PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: \(body.utf8.count)\r\n\r\n")
        #expect(try connection.readResponse().status == 100)
        try connection.send(body)
        #expect(try connection.readResponse().status == 204)
        // Sent with its body at once: no 100.
        try connection.send("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
        #expect(try connection.readResponse().status == 200)
    }

    @Test func chunkedBodiesAre501() throws {
        let api = try TestServer("chunked")
        defer { api.finish() }
        let connection = try api.connection()
        defer { connection.close() }
        try connection.send("PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1c\r\n{\"action_type\":\"Kill\"}\r\n0\r\n\r\n")
        let response = try connection.readResponse()
        #expect(response.status == 501)
        #expect(response.fault?.contains("Content-Length") == true)
    }

    @Test func aClientThatHangsUpHalfWayHarmsNothing() throws {
        let api = try TestServer("hangup")
        defer { api.finish() }
        for cut in [5, 40, 60] {
            let connection = try api.connection()
            let request = TestConnection.request("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 64}"#)
            try connection.send(Array(request[0..<cut]))
            connection.close()
        }
        // Hung up with a response on its way (the server's send meets a closed socket: no SIGPIPE).
        for _ in 0..<5 {
            let connection = try api.connection()
            try connection.send(TestConnection.request("GET", "/stats") + TestConnection.request("GET", "/stats"))
            connection.close()
        }
        #expect(try api.request("GET", "/").status == 200)
        #expect(api.controller.log.isEmpty)
    }

    @Test func garbageGetsA400AndTheServerGoesOn() throws {
        let api = try TestServer("garbage")
        defer { api.finish() }
        var generator = SplitMix64(seed: 42)
        for round in 0..<20 {
            let connection = try api.connection()
            let noise = (0..<(64 + round * 50)).map { _ in UInt8(truncatingIfNeeded: generator.next()) } + Array("\r\n\r\n".utf8)
            try connection.send(noise)
            let response = try connection.readResponse()
            #expect([400, 405, 431, 505].contains(response.status), "round \(round): \(response.status)")
            #expect(response.fault != nil)
            #expect(try connection.isClosedByServer())
            connection.close()
        }
        #expect(try api.request("GET", "/").status == 200)
    }

    @Test func clientsBeyondTheMaximumWaitTheirTurn() throws {
        let api = try TestServer("maximum", options: ControlServer.Options(idleTimeout: 10, maximumClients: 2))
        defer { api.finish() }
        let first = try api.connection()
        let second = try api.connection()
        try first.send(TestConnection.request("GET", "/"))
        try second.send(TestConnection.request("GET", "/"))
        #expect(try first.readResponse().status == 200)
        #expect(try second.readResponse().status == 200)
        // A third connects (the backlog takes it) but is served only once one of the two has gone.
        let third = try api.connection()
        defer { third.close() }
        try third.send(TestConnection.request("GET", "/stats"))
        var ready = pollfd(fd: third.fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&ready, 1, 300) == 0)
        first.close()
        #expect(try third.readResponse().status == 200)
        second.close()
    }

    @Test func aStoppedServerDoesNotStartAgain() throws {
        let api = try TestServer("restart")
        defer { api.finish() }
        api.server.stop()
        #expect(throws: ControlServerError.stopped) { try api.server.start() }
        #expect(access(api.path, F_OK) != 0)
    }

    @Test func aHalfClosedClientStillGetsItsAnswer() throws {
        let api = try TestServer("halfclose")
        defer { api.finish() }
        let connection = try api.connection()
        defer { connection.close() }
        try connection.send(TestConnection.request("GET", "/"))
        shutdown(connection.fd, Int32(SHUT_WR))
        #expect(try connection.readResponse().status == 200)
        #expect(try connection.isClosedByServer())
    }

    @Test func servesSeveralClientsAtOnce() throws {
        let api = try TestServer("several")
        defer { api.finish() }
        let connections = try (0..<12).map { _ in try api.connection() }
        defer { connections.forEach { $0.close() } }
        // Each sends the first half of its request, then all send the rest: the server holds them all.
        let requests = connections.indices.map { TestConnection.request("PUT", "/drives/d\($0)", "{\"drive_id\":\"d\($0)\",\"path_on_host\":\"/d\($0)\",\"is_root_device\":false}") }
        for (connection, request) in zip(connections, requests) { try connection.send(Array(request[0..<(request.count / 2)])) }
        for (connection, request) in zip(connections, requests) { try connection.send(Array(request[(request.count / 2)...])) }
        let statuses = try connections.map { try $0.readResponse().status }
        // Eight virtio devices at most: the ninth drive on is refused by validate(), the rest accepted.
        #expect(statuses.filter { $0 == 204 }.count == 8)
        #expect(statuses.filter { $0 == 400 }.count == 4)
        #expect(api.controller.draft().disks.count == 8)
    }

    @Test func pipelinedKeepAliveRequestsAreAnsweredInOrder() throws {
        let api = try TestServer("pipelined")
        defer { api.finish() }
        let connection = try api.connection()
        defer { connection.close() }
        try connection.send(
            TestConnection.request("PUT", "/boot-source", #"{"kernel_image_path":"/k"}"#) + TestConnection.request("GET", "/nope")
                + TestConnection.request("PUT", "/actions", #"{"action_type":"InstanceStart"}"#) + TestConnection.request("GET", "/")
                + TestConnection.request("GET", "/", close: true))
        #expect(try connection.readResponse().status == 204)
        #expect(try connection.readResponse().status == 404)
        #expect(try connection.readResponse().status == 204)
        let info = try connection.readResponse()
        #expect(info.json?["state"] as? String == "Running")
        #expect(info.headers["connection"] == nil)
        #expect(try connection.readResponse().headers["connection"] == "close")
        #expect(try connection.isClosedByServer())
    }

    @Test func anIdleHalfRequestGets408AndIsClosed() throws {
        let api = try TestServer("idle", options: ControlServer.Options(idleTimeout: 0.3))
        defer { api.finish() }
        let idle = try api.connection()
        defer { idle.close() }
        let quiet = try api.connection()
        defer { quiet.close() }
        try idle.send("PUT /machine-config HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        #expect(try idle.readResponse().status == 408)
        #expect(try idle.isClosedByServer())
        #expect(try quiet.isClosedByServer())  // closed without a word: it had no request open
    }

    @Test func theSocketIs0600AndRemovedOnStop() throws {
        let api = try TestServer("mode")
        defer { api.finish() }
        var info = stat()
        #expect(lstat(api.path, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        #expect(info.st_mode & 0o777 == 0o600)
        api.server.stop()
        #expect(access(api.path, F_OK) != 0)
        api.server.stop()  // twice is fine
    }

    @Test func aLiveServerIsNotReplacedButAStaleSocketIs() throws {
        let api = try TestServer("stale")
        defer { api.finish() }
        let second = ControlServer(path: api.path, controller: MockVMController())
        #expect(throws: ControlServerError.inUse(path: api.path)) { try second.start() }
        #expect(try api.request("GET", "/").status == 200)

        // A socket file whose server is gone: bound, never listened, closed.
        let stalePath = "\(api.folder)/stale.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = try #require(try UnixSocketPath(stalePath).address())
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        close(fd)
        let replacing = ControlServer(path: stalePath, controller: MockVMController())
        try replacing.start()
        let connection = try TestConnection(path: stalePath)
        try connection.send(TestConnection.request("GET", "/"))
        #expect(try connection.readResponse().status == 200)
        connection.close()
        replacing.stop()
        #expect(access(stalePath, F_OK) != 0)

        // Not a socket: refused, and left alone.
        let filePath = "\(api.folder)/plain-file"
        #expect(FileManager.default.createFile(atPath: filePath, contents: Data("keep".utf8)))
        #expect(throws: ControlServerError.notASocket(path: filePath)) { try ControlServer(path: filePath, controller: MockVMController()).start() }
        #expect(FileManager.default.contents(atPath: filePath) == Data("keep".utf8))
        #expect(throws: ControlServerError.self) { try ControlServer(path: "\(api.folder)/no/such/folder.sock", controller: MockVMController()).start() }
        #expect(throws: ControlServerError.self) { try ControlServer(path: "\(api.folder)/", controller: MockVMController()).start() }
    }

    @Test func aSocketPathLongerThanSunPathWorks() throws {
        var folder = try makeTemporaryFolder("long")
        let top = folder
        defer { try? FileManager.default.removeItem(atPath: top) }
        while folder.utf8.count < 200 { folder += "/a-rather-long-folder-name" }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = "\(folder)/api.sock"
        #expect(path.utf8.count > 107)
        let server = ControlServer(path: path, controller: MockVMController())
        try server.start()
        var info = stat()
        #expect(lstat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        let connection = try TestConnection(path: path)
        try connection.send(TestConnection.request("GET", "/"))
        #expect(try connection.readResponse().json?["state"] as? String == "Not started")
        connection.close()
        // Live there: a second server is refused through the long path too.
        #expect(throws: ControlServerError.inUse(path: path)) { try ControlServer(path: path, controller: MockVMController()).start() }
        server.stop()
        #expect(access(path, F_OK) != 0)
    }
}
