import ArgumentParser
import FoundationEssentials
import Glibc
import LibvirtXML
import VMConfig
import VMM
import VMStore

/// `swiftkvm import FILE.xml`: a libvirt domain description as a SwiftKVM VM configuration.
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Keep a VM described by a libvirt domain XML file (virsh dumpxml, virt-install --print-xml).",
        discussion: """
            Every element that matters is taken, warned about and ignored, or refused with what to do \
            instead. The VM is kept under the domain's name (or --name), as 'swiftkvm create' keeps \
            one: 'swiftkvm start NAME' runs it. --dry-run prints one line per decision (with its \
            XPath), then the configuration as JSON, and keeps nothing; --output writes the \
            configuration to a file instead of keeping it.

            Exit status: 0 when imported; 1 when the name is taken; 2 when the file cannot be read or \
            something in it is refused.

            Examples:
              virsh dumpxml web1 > web1.xml && swiftkvm import web1.xml --dry-run
              swiftkvm import web1.xml --drop-unsupported && swiftkvm start web1
              swiftkvm import web1.xml --output web1.json
            """)

    @Argument(help: ArgumentHelp("The domain XML file.", valueName: "file.xml"))
    var file: String

    @Option(name: .long, help: ArgumentHelp("The VM's name instead of the domain's.", valueName: "name"))
    var name: String?

    @Flag(name: .long, help: "Print the decisions and the configuration; write nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Drop the optional devices that cannot be run (host devices, libvirt networks and bridges, images other than raw) with a warning, instead of refusing the domain.")
    var dropUnsupported = false

    @Flag(name: .long, help: "With --dry-run: print the decisions and the configuration as one JSON object.")
    var json = false

    @Option(name: .long, help: ArgumentHelp("Write the configuration (JSON) to this file, which must not exist yet.", valueName: "file.json"))
    var output: String?

    func run() throws {
        if let name {
            do { try VMConfiguration.validateName(name) } catch { throw UsageError("--name: \(error)") }
        }
        if json, !dryRun { throw UsageError("--json goes with --dry-run (the --output file is always JSON)") }
        if dryRun, output != nil { throw UsageError("--dry-run writes nothing: give it or --output, not both") }
        // Larger files get the importer's own one-line refusal (XMLReadError.tooLarge).
        let bytes: [UInt8]
        do { bytes = try readHostFile(file, limit: 64 << 20) } catch { throw UsageError(error.description) }
        let options = ImportOptions(name: name, dropUnsupported: dropUnsupported)
        let result: ImportResult
        do {
            result = try LibvirtImport.importDomain(bytes: bytes, options: options)
        } catch {
            if case .refused(let decisions) = error, dryRun {
                try printDecisions(decisions, configuration: nil)
                fflush(stdout)
            }
            throw UsageError("\(file): \(Self.describe(error, dryRun: dryRun))")
        }
        if dryRun {
            try printDecisions(result.decisions, configuration: result.configuration)
            return
        }
        let warned = result.decisions.filter { $0.kind == .warned }.count
        let warnings = "\(warned) warning\(warned == 1 ? "" : "s"): see --dry-run"
        guard let output else {
            // A kept VM: the name must be one a VM folder can have (a domain's may not be).
            let kept = name ?? result.configuration.name ?? ""
            if let problem = VMName.problem(with: kept) {
                throw UsageError("\(file): the domain's name cannot name a kept VM (\(problem)): give --name NAME")
            }
            var configuration = result.configuration
            configuration.name = kept
            do { try Kept.store.create(kept, configuration: configuration) } catch { throw Kept.cli(error) }
            let folder = try Kept.folder(kept)
            EventLog(path: folder.eventLogPath).append("created", "imported from \(file)")
            print("imported \(kept) from \(file) (\(warnings)); 'swiftkvm start \(kept)' runs it")
            return
        }
        var data = try encodeJSON(result.configuration)
        data.append(UInt8(ascii: "\n"))
        try writeNew(output, data)
        fputs("swiftkvm: imported \(result.configuration.name ?? "the domain") into \(output) (\(warnings))\n", stderr)
    }

    static func describe(_ error: LibvirtImportError, dryRun: Bool) -> String {
        var text = error.description
        let refusals = error.refusals
        if !refusals.isEmpty, refusals.allSatisfy(\.droppable) { text += "; or give --drop-unsupported to leave it out" }
        if refusals.count > 1, !dryRun { text += "; --dry-run lists them all" }
        return text
    }

    func printDecisions(_ decisions: [Decision], configuration: VMConfiguration?) throws {
        if json {
            struct Report: Encodable {
                struct Entry: Encodable {
                    var xpath: String
                    var kind: String
                    var message: String
                }
                var decisions: [Entry]
                var configuration: VMConfiguration?
            }
            let report = Report(decisions: decisions.map { Report.Entry(xpath: $0.xpath, kind: $0.kind.rawValue, message: $0.message) }, configuration: configuration)
            print(String(decoding: try encodeJSON(report), as: UTF8.self))
            return
        }
        for decision in decisions {
            print("\(decision.kind.rawValue.padding(8)) \(decision.xpath): \(decision.message)")
        }
        if let configuration { print(String(decoding: try encodeJSON(configuration), as: UTF8.self)) }
    }
}

/// `swiftkvm export NAME|--config FILE.json --format libvirt|json|cmdline`.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a VM configuration as libvirt domain XML, as JSON, or as the equivalent 'swiftkvm run' command.",
        discussion: """
            cmdline prints the swiftkvm run command on standard output and, on standard error, the \
            fields that swiftkvm run has no option for.

            Examples:
              swiftkvm export web1 --format libvirt > web1.xml && virsh define web1.xml
              swiftkvm export --config web1.json --format cmdline
            """)

    @Argument(help: ArgumentHelp("A kept VM's name (swiftkvm list shows them).", valueName: "name"))
    var name: String?

    @Option(name: .long, help: ArgumentHelp("The VM configuration (JSON).", valueName: "file.json"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("What to print: libvirt, json or cmdline.", valueName: "libvirt|json|cmdline"))
    var format: String = "json"

    func run() throws {
        guard ["libvirt", "json", "cmdline"].contains(format) else { throw UsageError("--format must be libvirt, json or cmdline, not '\(format)'") }
        if name != nil, config != nil { throw UsageError("give either a VM name or --config, not both") }
        let configuration: VMConfiguration
        let source: String
        if let name {
            let folder = try Kept.folder(name)
            do { configuration = try folder.definition() } catch { throw Kept.cli(error) }
            source = name
        } else if let config {
            configuration = try Run.loadConfiguration(config)
            source = config
        } else {
            throw UsageError("nothing to export: give a kept VM's name or --config FILE.json")
        }
        switch format {
        case "libvirt":
            do { print(try LibvirtExport.domainXML(for: configuration), terminator: "") } catch { throw UsageError("\(source): \(error)") }
        case "cmdline":
            let command = LibvirtExport.runCommand(for: configuration)
            print(command.shellLine)
            if !command.unsupported.isEmpty {
                fputs(
                    "swiftkvm: no 'swiftkvm run' option yet for: \(command.unsupported.joined(separator: ", ")); "
                        + (name.map { "'swiftkvm start \($0)' runs all of it\n" } ?? "'swiftkvm run --config \(source)' runs all of it\n"),
                    stderr)
            }
        default:
            print(try ConfigurationFile.encode(configuration))
        }
    }
}

func encodeJSON<T: Encodable>(_ value: T) throws -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    do { return Array(try encoder.encode(value)) } catch { throw RuntimeFailure("could not write JSON: \(error)") }
}

/// Writes a file that must not exist yet (O_EXCL), whole or not at all.
func writeNew(_ path: String, _ bytes: [UInt8]) throws {
    let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard descriptor >= 0 else {
        if errno == EEXIST { throw UsageError("\(path) exists: choose another file or remove it") }
        throw UsageError("\(path): \(String(cString: strerror(errno)))")
    }
    var written = 0
    while written < bytes.count {
        let count = bytes[written...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            let message = String(cString: strerror(errno))
            close(descriptor)
            unlink(path)
            throw RuntimeFailure("\(path): \(message)")
        }
        written += count
    }
    guard close(descriptor) == 0 else { throw RuntimeFailure("\(path): \(String(cString: strerror(errno)))") }
}

extension String {
    fileprivate func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
