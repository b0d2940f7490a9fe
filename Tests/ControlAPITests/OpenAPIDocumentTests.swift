import Foundation
import Testing

@testable import ControlAPI
import ControlAPIMock
import VMConfig

/// docs/openapi.yaml and the router agree on paths and methods: every documented operation is
/// routed, and every method the document leaves out of a path is a 405. (Bodies and statuses are
/// checked against the document by schemathesis: `make api-check`.)
@Suite struct OpenAPIDocumentTests {
    static let document: String = {
        var path = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        path.removeLast(3)  // Tests/ControlAPITests/OpenAPIDocumentTests.swift
        return path.joined(separator: "/") + "/docs/openapi.yaml"
    }()

    /// Path → methods, read from the `paths:` section (two-space indented paths, four-space methods).
    static func operations() throws -> [String: Set<String>] {
        let text = try String(contentsOfFile: document, encoding: .utf8)
        var operations: [String: Set<String>] = [:]
        var inPaths = false
        var current: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" { inPaths = true; continue }
            if inPaths, let first = line.first, first != " " { break }
            guard inPaths else { continue }
            if line.hasPrefix("  /"), line.hasSuffix(":"), !line.hasPrefix("   ") {
                current = String(line.dropFirst(2).dropLast())
                operations[current!] = []
            } else if let current, line.hasPrefix("    "), !line.hasPrefix("     "), line.hasSuffix(":") {
                operations[current]!.insert(String(line.dropFirst(4).dropLast()).uppercased())
            }
        }
        return operations
    }

    @Test func everyDocumentedOperationIsRoutedAndNoOther() throws {
        let operations = try Self.operations()
        #expect(operations.count == 11)
        #expect(operations.values.map(\.count).reduce(0, +) == 12)
        let router = APIRouter(controller: MockVMController())
        for (template, methods) in operations {
            let path = template.replacingOccurrences(of: "{drive_id}", with: "d1").replacingOccurrences(of: "{iface_id}", with: "n1")
            for method in HTTPMethod.allCases {
                let request = HTTPRequest(method: method, path: path, query: nil, minorVersion: 1, headers: HTTPHeaders(), body: [])
                let response = router.respond(to: request)
                let status = response.status.code
                if methods.contains(method.rawValue) {
                    let unrouted = String(decoding: response.body, as: UTF8.self).contains("no such endpoint")
                    #expect(!unrouted && status != 405, "\(method.rawValue) \(template): \(status)")
                } else {
                    #expect(status == 405, "\(method.rawValue) \(template) is not documented but answered \(status)")
                }
            }
        }
    }

    /// The configuration's choices, as the document lists them, are the ones VMConfig takes (a
    /// new boot entry once reached GET /vm/config before the document knew it).
    @Test func theDocumentedChoicesAreTheConfigurationsChoices() throws {
        let text = try String(contentsOfFile: Self.document, encoding: .utf8)
        func enumeration(after key: String, within section: String) -> [String]? {
            guard let start = text.range(of: section) else { return nil }
            guard let line = text[start.upperBound...].split(separator: "\n").first(where: { $0.contains("\(key): {") && $0.contains("enum:") }),
                let open = line.range(of: "enum: ["), let close = line[open.upperBound...].firstIndex(of: "]")
            else { return nil }
            return line[open.upperBound..<close].split(separator: ",").map { $0.trimmingCharacters(in: CharacterSet(charactersIn: " '\"")) }
        }
        #expect(enumeration(after: "entry", within: "linux:") == LinuxBootSource.entries)
        #expect(enumeration(after: "mode", within: "firmware:") == FirmwareBootSource.modes)
    }
}
