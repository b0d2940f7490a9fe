import ArgumentParser
import FoundationEssentials
import Glibc
import LibvirtXML
import VMConfig
import VMM

/// `swiftkvm import FILE.xml`: a libvirt domain description as a SwiftKVM VM configuration.
struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Read a libvirt domain XML file (virsh dumpxml, virt-install --print-xml) as a VM configuration.",
        discussion: """
            Every element that matters is taken, warned about and ignored, or refused with what to do \
            instead. --dry-run prints one line per decision (with its XPath), then the configuration as \
            JSON. Kept VMs (swiftkvm create) do not exist yet: write the configuration to a file with \
            --output and run it from there.

            Exit status: 0 when imported; 2 when the file cannot be read or something in it is refused.

            Examples:
              virsh dumpxml web1 > web1.xml && swiftkvm import web1.xml --dry-run
              swiftkvm import web1.xml --output web1.json --drop-unsupported
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
        guard dryRun || output != nil else {
            throw UsageError(
                "keeping an imported VM needs 'swiftkvm create', which is not built yet: give --output FILE.json to write its configuration, or --dry-run to see it")
        }
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
        guard let output else { return }
        var data = try encodeJSON(result.configuration)
        data.append(UInt8(ascii: "\n"))
        try writeNew(output, data)
        let warned = result.decisions.filter { $0.kind == .warned }.count
        fputs("swiftkvm: imported \(result.configuration.name ?? "the domain") into \(output) (\(warned) warning\(warned == 1 ? "" : "s"): see --dry-run)\n", stderr)
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

/// `swiftkvm export --config FILE.json --format libvirt|json|cmdline`.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a VM configuration as libvirt domain XML, as JSON, or as the equivalent 'swiftkvm run' command.",
        discussion: """
            cmdline prints the swiftkvm run command on standard output and, on standard error, the \
            fields that swiftkvm run has no option for.

            Examples:
              swiftkvm export --config web1.json --format libvirt > web1.xml && virsh define web1.xml
              swiftkvm export --config web1.json --format cmdline
            """)

    @Argument(help: ArgumentHelp("A kept VM's name (kept VMs are not built yet: use --config).", valueName: "name"))
    var name: String?

    @Option(name: .long, help: ArgumentHelp("The VM configuration (JSON).", valueName: "file.json"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("What to print: libvirt, json or cmdline.", valueName: "libvirt|json|cmdline"))
    var format: String = "json"

    func run() throws {
        guard ["libvirt", "json", "cmdline"].contains(format) else { throw UsageError("--format must be libvirt, json or cmdline, not '\(format)'") }
        guard let config else {
            if let name { throw UsageError("there are no kept VMs yet ('\(name)'): give --config FILE.json") }
            throw UsageError("nothing to export: give --config FILE.json")
        }
        if name != nil { throw UsageError("give either a VM name or --config, not both") }
        let configuration = try Run.loadConfiguration(config)
        switch format {
        case "libvirt":
            do { print(try LibvirtExport.domainXML(for: configuration), terminator: "") } catch { throw UsageError("\(config): \(error)") }
        case "cmdline":
            let command = LibvirtExport.runCommand(for: configuration)
            print(command.shellLine)
            if !command.unsupported.isEmpty {
                fputs(
                    "swiftkvm: no 'swiftkvm run' option yet for: \(command.unsupported.joined(separator: ", ")); 'swiftkvm run --config \(config)' runs all of it\n",
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
