import Foundation
import Testing

/// The pages in docs/ (and the READMEs) point into the code by name. This keeps those names true:
/// a file or type renamed or removed in the code fails here until the page is fixed.
///
/// What is checked, in every `code span` outside fenced code blocks, and in every relative link:
///
/// - a repository path (it contains `/` or ends in a source extension such as `.swift`, `.S`,
///   `.md`) must exist, relative to the page or to the repository root. Absolute paths (`/dev/kvm`,
///   `/var/cache/swiftkvm`) are host or guest paths, and paths in the Linux source tree
///   (`linuxSourceTree`) are the kernel's: neither is checked. Build outputs are checked against
///   what they are built from: `Firmware/build/NAME.bin` needs `Firmware/src/NAME.S` or `.c`. A glob
///   (`Firmware/src/*.S`) must match something; a `NAME` placeholder needs its folder.
/// - a link's file must exist, and its `#fragment` must be a heading of that page.
/// - a Swift name — `Type`, `Type.member`, `Type.member(label:other:)`, `Type(label: value)`,
///   `Type<…>`, `.enumCase(label:)` — must be declared in Sources/ or Tests/ (`struct`, `class`,
///   `enum`, `protocol`, `actor`, `typealias` or `extension`, nested ones included); a member must
///   be declared (`func`, `var`, `let`, `case`, a nested type, or `init`) in a file that declares the
///   type; argument labels must match a declaration: exactly for a selector (`run(timeLimit:)`),
///   in order for a call (`UnitGuest(contentsOf: path, mode: .long)`). An UpperCamelCase name that is
///   not ours must be in `notOurTypes`. Names in capitals only (`KVM_RUN`, `EINTR`, `LSR`) are C or
///   hardware names and are checked only if they are one of our types (`VCPU`, `I8042`). A member
///   named alone is checked when its shape says Swift: camelCase (`enqueueInput`) or labels
///   (`read(offset:data:)`); `hlt`, `putc` or `cmd_line_ptr` are not.
/// - `ckvm_…` and `CKVM_…` must appear in Sources/CKVM.
/// - `--option` (alone, or in a `swiftkvm …` command) must be an option of `swiftkvm` or
///   `swiftkvm-bench`; `make TARGET` and `make -C DIR TARGET` must name a Makefile target.
///
/// A member is looked for in the whole file that declares its type, so a member of another type in
/// the same file passes; everything else is strict.
@Suite struct DocsNameTests {
    static let root: String = {
        var path = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        path.removeLast(3)  // Tests/DocsTests/DocsNameTests.swift
        return path.joined(separator: "/")
    }()

    /// The pages whose names are checked, relative to the root.
    static var documents: [String] {
        let pages = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/docs")) ?? []
        return ["README.md"] + pages.filter { $0.hasSuffix(".md") }.sorted().map { "docs/\($0)" }
            + ["Firmware/README.md", "Firmware/linux/README.md"]
    }

    @Test func everyFileAndTypeTheDocsNameExists() throws {
        let checker = try DocsChecker(root: Self.root)
        #expect(Self.documents.count >= 5, "docs/ has its pages: \(Self.documents)")
        for document in Self.documents {
            let text = try String(contentsOfFile: "\(Self.root)/\(document)", encoding: .utf8)
            for problem in checker.problems(in: text, document: document) {
                Issue.record(Comment(rawValue: problem.description))
            }
        }
    }

    /// The check itself: stale names of every kind are reported, with the page and line; good
    /// names, fenced code and prose are not.
    @Test func theCheckReportsStaleNamesWithPageAndLine() throws {
        let checker = try DocsChecker(root: Self.root)
        let page = """
            # A page

            Good: `Sources/VMM/Machine.swift`, `Machine`, `Machine.run(timeLimit:paused:)`, `GuestOutcome.exited(status:)`,
            `UnitGuest(contentsOf: "Firmware/build/answer.bin", mode: .long)`, `.timedOut`, `Bus.Entry.label`,
            `CKVM_RUN`, `--trace`, `make test`, `Firmware/src/*.S`, `Firmware/build/hello-long.bin`, `KVM_RUN`,
            `/dev/kvm`, `swiftkvm run --firmware Firmware/build/hello-long.bin --trace`, [the index](README.md), `Firmware/src/NAME.c`.

            ```swift
            let ignored = `NotCheckedInFencedCode`
            ```

            Bad: `Sources/VMM/Nowhere.swift`, `NoSuchType`, `Machine.noSuchMember`, `Machine.run(deadline:)`,
            `.noSuchCase`, `ckvm_no_such_shim`, `--no-such-option`, `make no-such-target`, [gone](gone.md),
            `Firmware/build/no-such-guest.bin`, `swiftkvm run --no-such-flag`, `Firmware/src/*.zig`,
            `UnitGuest(mode: .long, contentsOf: "x")`, `Bus.NoSuchNested.label`, [a](README.md#no-such-heading),
            [b](#bad-anchor). Good again: [c](how-kvm-works.md#interrupts-back-in), [d](#a-page), `setLevel(true)`,
            `read(offset:data:)`, `enqueueInput`, `kvm_run.io`, `hlt`. Bad: `enqueueInputs`, `setLevel(high:)`.
            """
        let problems = checker.problems(in: page, document: "docs/example.md")
        #expect(problems.map(\.token) == [
            "Sources/VMM/Nowhere.swift", "NoSuchType", "Machine.noSuchMember", "Machine.run(deadline:)",
            ".noSuchCase", "ckvm_no_such_shim", "--no-such-option", "make no-such-target", "gone.md",
            "Firmware/build/no-such-guest.bin", "swiftkvm run --no-such-flag", "Firmware/src/*.zig",
            "UnitGuest(mode: .long, contentsOf: \"x\")", "Bus.NoSuchNested.label", "README.md#no-such-heading",
            "#bad-anchor", "enqueueInputs", "setLevel(high:)",
        ])
        #expect(problems.map(\.line) == [12, 12, 12, 12, 13, 13, 13, 13, 13, 14, 14, 14, 15, 15, 15, 16, 17, 17])
        #expect(problems.first?.description.hasPrefix("docs/example.md:12: `Sources/VMM/Nowhere.swift`") == true)
    }
}

/// One stale reference: where it is and why it fails.
struct DocsProblem: CustomStringConvertible {
    let document: String
    let line: Int
    let token: String
    let reason: String

    var description: String { "\(document):\(line): `\(token)` — \(reason)" }
}

/// The names the code declares, and the checks against them.
struct DocsChecker {
    /// UpperCamelCase words the pages use that are not declared in Sources/ or Tests/, each with
    /// where it comes from. Keep it short: anything here is not checked. (A page that names a
    /// standard type such as `Duration` or `Mutex` adds it here.)
    static let notOurTypes: Set<String> = [
        "System",  // `System.map`, the kernel's symbol table file (Firmware/linux/README.md)
        "HdrS",  // the bzImage header magic (boot.rst)
    ]

    /// ELF section names the pages use (`.bss`): not enum cases.
    static let sectionNames: Set<String> = [".bss", ".text", ".data", ".rodata", ".setup"]

    /// Words that stand for any file name in a path (`Firmware/src/NAME.c`): its folder must exist.
    static let placeholders: Set<String> = ["NAME", "FILE"]

    /// File extensions that make a code span a repository path even without a `/`.
    static let pathExtensions = ["swift", "S", "c", "h", "ld", "py", "sh", "md", "inc", "patch", "config", "docc"]

    /// Documents that name files by paths relative to somewhere other than the repository: these
    /// prefixes are not checked there. Firmware/linux/README.md lists what `make -C Firmware/linux`
    /// writes into the cache (`$SWIFTKVM_CACHE`), relative to the cache.
    static let outsideRepository: [String: [String]] = [
        "Firmware/linux/README.md": ["test-kernel/", "stock-kernel/", "debs/", "build/"]
    ]

    /// Where paths in the Linux kernel's source tree begin, which the pages cite
    /// (`Documentation/arch/x86/boot.rst`, `drivers/virtio/virtio_mmio.c`): not ours, not checked.
    static let linuxSourceTree = ["Documentation/", "drivers/", "arch/x86/"]

    let root: String
    /// Type name → the files (relative) that declare or extend it.
    private var typeFiles: [String: Set<String>] = [:]
    /// File → every name declared in it (members, nested types, `init`).
    private var declared: [String: Set<String>] = [:]
    /// File → its text without comments, for argument labels.
    private var code: [String: String] = [:]
    /// Enum case name → the files that declare it.
    private var caseFiles: [String: Set<String>] = [:]
    /// Target directories under Sources/ and Tests/.
    private var modules: Set<String> = []
    /// Identifiers in Sources/CKVM (C).
    private var cNames: Set<String> = []
    /// Option names (`--trace-file` is `traceFile`) of the command-line tools.
    private var options: Set<String> = ["help"]

    init(root: String) throws {
        self.root = root
        let files = FileManager.default
        for top in ["Sources", "Tests"] {
            for module in try files.contentsOfDirectory(atPath: "\(root)/\(top)") where isDirectory("\(top)/\(module)") {
                modules.insert(module)
            }
            guard let walker = files.enumerator(atPath: "\(root)/\(top)") else { continue }
            for case let relative as String in walker {
                let path = "\(top)/\(relative)"
                if relative.hasSuffix(".swift") {
                    try index(swiftFile: path)
                } else if path.hasPrefix("Sources/CKVM/"), relative.hasSuffix(".c") || relative.hasSuffix(".h") {
                    cNames.formUnion(SwiftSource.identifiers(in: try read(path)))
                }
            }
        }
        // Every file of the swiftkvm tool declares subcommands' options (Import.swift, …).
        let toolFiles = ((try? files.contentsOfDirectory(atPath: "\(root)/Sources/swiftkvm")) ?? []).filter { $0.hasSuffix(".swift") }.sorted()
        for tool in toolFiles.map({ "Sources/swiftkvm/\($0)" }) + ["Sources/swiftkvm-bench/Options.swift"] where exists(tool) {
            let source = SwiftSource.withoutComments(try read(tool))
            options.formUnion(SwiftSource.declarations(in: source).members)
            // Options named explicitly, `name: .customLong("no-acpi")`, under their spelled-out name.
            for piece in try read(tool).components(separatedBy: ".customLong(\"").dropFirst() {
                if let name = piece.split(separator: "\"").first { options.insert(Self.property(forOption: String(name))) }
            }
        }
    }

    private mutating func index(swiftFile path: String) throws {
        let text = SwiftSource.withoutComments(try read(path))
        code[path] = text
        let found = SwiftSource.declarations(in: text)
        declared[path] = found.members.union(found.types)
        for type in found.types { typeFiles[type, default: []].insert(path) }
        for name in found.cases { caseFiles[name, default: []].insert(path) }
    }

    // MARK: - Pages

    /// Every stale name in `text`, the page at `document` (relative to the root).
    func problems(in text: String, document: String) -> [DocsProblem] {
        let directory = (document as NSString).deletingLastPathComponent
        var problems: [DocsProblem] = []
        for span in MarkdownSpans.scan(text) {
            let reason: String?
            switch span.kind {
            case .code: reason = check(code: span.text, document: document, directory: directory)
            case .link: reason = checkLink(span.text, directory: directory, page: text)
            }
            if let reason { problems.append(DocsProblem(document: document, line: span.line, token: span.text, reason: reason)) }
        }
        return problems
    }

    /// Why the code span `token` names something that is not there, or nil.
    func check(code token: String, document: String, directory: String) -> String? {
        let words = token.split(whereSeparator: \.isWhitespace).map(String.init)
        guard let first = words.first else { return nil }
        if words.count > 1 {
            // `UnitGuest(contentsOf: path, mode: .long)` has spaces too.
            if let reference = SwiftReference(token) { return check(reference) }
            return check(command: words, directory: directory)
        }
        if first.hasPrefix("--") { return check(option: first) }
        if first.hasPrefix("ckvm_") || first.hasPrefix("CKVM_") {
            return cNames.contains(first) ? nil : "not in Sources/CKVM"
        }
        if looksLikePath(first) { return check(path: first, document: document, directory: directory) }
        if Self.sectionNames.contains(first) { return nil }
        if let reference = SwiftReference(first) { return check(reference) }
        return nil
    }

    /// A relative link's file must exist; a `#fragment` into a Markdown page must name one of its headings.
    func checkLink(_ target: String, directory: String, page: String) -> String? {
        if target.contains("://") || target.hasPrefix("mailto:") { return nil }
        let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let path = parts[0]
        var text = page
        var shown = "this page"
        if !path.isEmpty {
            let resolved = normalize(directory.isEmpty ? path : "\(directory)/\(path)")
            guard exists(resolved) else { return "the link's target \(resolved) does not exist" }
            guard parts.count > 1, resolved.hasSuffix(".md") else { return nil }
            text = (try? read(resolved)) ?? ""
            shown = resolved
        }
        guard parts.count > 1 else { return nil }
        return MarkdownSpans.headingAnchors(in: text).contains(parts[1]) ? nil : "\(shown) has no heading #\(parts[1])"
    }

    // MARK: - Paths

    func looksLikePath(_ token: String) -> Bool {
        if token.hasPrefix("/") || token.hasPrefix("<") || token.hasPrefix("$") || token.hasPrefix("~") { return false }
        if token.contains("://") || token.contains(where: { "=@|(\"'".contains($0) }) { return false }
        if token.contains("/") { return true }
        guard let dot = token.lastIndex(of: "."), dot != token.startIndex else { return false }
        return Self.pathExtensions.contains(String(token[token.index(after: dot)...]))
    }

    func check(path token: String, document: String, directory: String) -> String? {
        if Self.outsideRepository[document]?.contains(where: { token.hasPrefix($0) }) == true { return nil }
        if Self.linuxSourceTree.contains(where: { token.hasPrefix($0) }) { return nil }
        let candidates = (directory.isEmpty ? [] : [normalize("\(directory)/\(token)")]) + [normalize(token)]
        var reasons: [String] = []
        for candidate in candidates {
            guard let reason = check(resolvedPath: candidate) else { return nil }
            reasons.append(reason)
        }
        if candidates.count > 1, reasons.allSatisfy({ $0.hasSuffix(" does not exist") }) {
            return "neither \(candidates[0]) nor \(candidates[1]) exists"
        }
        return reasons.last
    }

    /// `path` is relative to the root.
    func check(resolvedPath path: String) -> String? {
        if path.hasPrefix(".build/") || path == ".build" { return nil }  // SwiftPM's output
        if path == "Firmware/build" { return nil }
        if path.hasPrefix("Firmware/build/") {
            // `make firmware` output: the guest's source must exist.
            let file = (path as NSString).lastPathComponent
            let name = String(file.prefix { $0 != "." })
            if name.isEmpty || name.contains("*") || Self.placeholders.contains(name) { return nil }
            let sources = ["Firmware/src/\(name).S", "Firmware/src/\(name).c"]
            return sources.contains(where: exists) ? nil : "no \(sources.joined(separator: " or ")) builds \(path)"
        }
        let stem = String((path as NSString).lastPathComponent.prefix { $0 != "." })
        if Self.placeholders.contains(stem) {
            let directory = (path as NSString).deletingLastPathComponent
            return directory.isEmpty || isDirectory(directory) ? nil : "\(directory) is not a directory"
        }
        if path.contains("*") || path.contains("?") {
            let directory = (path as NSString).deletingLastPathComponent
            let pattern = (path as NSString).lastPathComponent
            guard !directory.contains("*"), isDirectory(directory) else { return "\(directory) is not a directory" }
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/\(directory)")) ?? []
            return entries.contains { fnmatch(pattern, $0, 0) == 0 } ? nil : "nothing in \(directory) matches \(pattern)"
        }
        return exists(path) ? nil : "\(path) does not exist"
    }

    func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." { continue }
            if part == "..", let last = parts.last, last != ".." { parts.removeLast() } else { parts.append(part) }
        }
        return parts.joined(separator: "/")
    }

    func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: "\(root)/\(path)") }

    func isDirectory(_ path: String) -> Bool {
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: "\(root)/\(path)", isDirectory: &directory) && directory.boolValue
    }

    func read(_ path: String) throws -> String { try String(contentsOfFile: "\(root)/\(path)", encoding: .utf8) }

    // MARK: - Commands and options

    func check(command words: [String], directory: String) -> String? {
        let tool = (words[0] as NSString).lastPathComponent
        if tool == "swiftkvm" || words[0].hasPrefix("--") {
            for word in words where word.hasPrefix("--") {
                if let reason = check(option: word) { return reason }
            }
            for word in words.dropFirst() where word.hasPrefix("Firmware/") || word.hasPrefix("Sources/") || word.hasPrefix("Tests/") {
                if let reason = check(resolvedPath: normalize(word)) { return reason }
            }
            return nil
        }
        if tool == "make" { return check(make: Array(words.dropFirst()), directory: directory) }
        return nil
    }

    func check(option word: String) -> String? {
        let name = word.dropFirst(2).prefix { $0 != "=" && $0 != "[" }
        guard !name.isEmpty else { return nil }
        return options.contains(Self.property(forOption: String(name))) ? nil : "no option --\(name) in Sources/swiftkvm or Sources/swiftkvm-bench"
    }

    /// `trace-file` → `traceFile`: the property ArgumentParser derives an option's name from.
    static func property(forOption name: String) -> String {
        let parts = name.split(separator: "-")
        guard let head = parts.first else { return name }
        return String(head) + parts.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }

    func check(make arguments: [String], directory: String) -> String? {
        var arguments = arguments[...]
        var makefiles = directory.isEmpty ? ["Makefile"] : ["\(directory)/Makefile", "Makefile"]
        if arguments.first == "-C" {
            arguments = arguments.dropFirst()
            guard let target = arguments.popFirst() else { return "make -C needs a directory" }
            makefiles = [normalize("\(target)/Makefile")]
            guard exists(makefiles[0]) else { return "\(makefiles[0]) does not exist" }
        }
        let targets = makefiles.filter(exists).reduce(into: Set<String>()) { result, file in
            result.formUnion(Self.makeTargets(in: (try? read(file)) ?? ""))
        }
        for target in arguments where !target.hasPrefix("-") && !target.contains("=") && !targets.contains(target) {
            return "no target \(target) in \(makefiles.joined(separator: " or "))"
        }
        return nil
    }

    /// The targets a Makefile names: `target other: …` rule lines and `.PHONY:`.
    static func makeTargets(in text: String) -> Set<String> {
        var targets: Set<String> = []
        for line in text.split(separator: "\n") where !line.hasPrefix("\t") && !line.hasPrefix("#") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let after = line[line.index(after: colon)...]
            if after.hasPrefix("=") || line[..<colon].contains("=") { continue }  // an assignment
            let names = line[..<colon].split(separator: " ").map(String.init)
            if names == [".PHONY"] {
                targets.formUnion(after.split(separator: " ").map(String.init))
            } else {
                targets.formUnion(names)
            }
        }
        return targets
    }

    // MARK: - Swift names

    func check(_ reference: SwiftReference) -> String? {
        if reference.leadingDot {
            let name = reference.components[0]
            guard let files = caseFiles[name] else { return "no enum case \(name) in Sources/ or Tests/" }
            return reference.arguments.flatMap { check(arguments: $0, of: name, in: files, keyword: "case") }
        }
        let first = reference.components[0]
        guard first.first?.isUppercase == true else { return check(member: reference) }
        guard var files = typeFiles[first] else {
            if modules.contains(first) || Self.notOurTypes.contains(first) { return nil }
            let isUpperCamelCase = first.first?.isUppercase == true && first.contains(where: \.isLowercase)
            return isUpperCamelCase ? "no type \(first) is declared in Sources/ or Tests/" : nil
        }
        var owner = first
        for member in reference.components.dropFirst() {
            let names = files.reduce(into: Set<String>()) { $0.formUnion(declared[$1] ?? []) }
            guard names.contains(member) else {
                return "\(owner) has no member \(member) (looked in \(files.sorted().joined(separator: ", ")))"
            }
            if member.first?.isUppercase == true, let nested = typeFiles[member] {
                files = nested
                owner = member
                continue
            }
            // A value member: its own members have types this check does not follow.
            if member == reference.components.last, let arguments = reference.arguments {
                return check(arguments: arguments, of: member, in: files, keyword: member == "init" ? "init" : "func")
            }
            return nil
        }
        if let arguments = reference.arguments {
            return check(arguments: arguments, of: "init", in: files, keyword: "init")
        }
        return nil
    }

    /// A member named without its type: `enqueueInput`, `setLevel(_:)`, `read(offset:data:)`. Only
    /// names that are Swift by their shape are checked — camelCase, or with argument labels — since
    /// `hlt`, `putc`, `kvm_run.io` and `run.reports` are instructions, C or values in an example.
    func check(member reference: SwiftReference) -> String? {
        let name = reference.components[0]
        let isCamelCase = name.contains(where: \.isUppercase) && !name.contains("_")
        let hasLabels = reference.arguments?.contains(":") == true
        guard reference.components.count == 1, isCamelCase || hasLabels else { return nil }
        let files = Set(declared.compactMap { $0.value.contains(name) ? $0.key : nil })
        if files.isEmpty { return "nothing named \(name) is declared in Sources/ or Tests/" }
        return reference.arguments.flatMap { check(arguments: $0, of: name, in: files, keyword: "func") }
    }

    /// Whether `arguments` (inside the parentheses) fits a declaration of `name` in `files`.
    func check(arguments: String, of name: String, in files: Set<String>, keyword: String) -> String? {
        let wanted = SwiftReference.labels(ofArguments: arguments)
        var declarations: [[String]] = []
        let keywords = keyword == "init" ? ["init"] : ["func", "case"]
        for file in files.sorted() {
            for keyword in keywords {
                declarations += SwiftSource.parameterLabels(of: name, after: keyword, in: code[file] ?? "")
            }
        }
        // An `init` nobody wrote is the memberwise one: nothing to compare with.
        if declarations.isEmpty { return keyword == "init" ? nil : "no func or case \(name)(…) in \(files.sorted().joined(separator: ", "))" }
        let fits = declarations.contains { declared in
            wanted.isSelector ? declared == wanted.labels : wanted.labels.isSubsequence(of: declared)
        }
        if fits { return nil }
        let shown = Set(declarations.map { "(" + $0.map { "\($0):" }.joined() + ")" }).sorted().joined(separator: ", ")
        return "no \(name) takes these labels; declared: \(shown)"
    }
}

extension Array where Element == String {
    func isSubsequence(of other: [String]) -> Bool {
        var remaining = other[...]
        for label in self {
            guard let index = remaining.firstIndex(of: label) else { return false }
            remaining = remaining[(index + 1)...]
        }
        return true
    }
}

/// `Type.member(label:)`, `Type(label: value)`, `Type<…>` or `.enumCase(…)`, parsed; nil for
/// anything else.
struct SwiftReference {
    let leadingDot: Bool
    let components: [String]
    /// The text between the outer parentheses, if there are any.
    let arguments: String?

    init?(_ token: String) {
        var rest = Substring(token)
        leadingDot = rest.first == "."
        if leadingDot { rest = rest.dropFirst() }
        var components: [String] = []
        while true {
            guard let head = rest.first, head.isLetter || head == "_" else { return nil }
            let name = rest.prefix { $0.isLetter || $0.isNumber || $0 == "_" }
            components.append(String(name))
            rest = rest.dropFirst(name.count)
            guard rest.first == ".", rest.count > 1 else { break }
            rest = rest.dropFirst()
        }
        self.components = components
        if rest.isEmpty {
            arguments = nil
        } else if rest.first == "(", rest.last == ")", SwiftSource.closingIndex(in: rest, from: rest.startIndex) == rest.index(before: rest.endIndex) {
            arguments = String(rest.dropFirst().dropLast())
        } else if rest.first == "<", rest.last == ">" {
            arguments = nil
        } else {
            return nil
        }
    }

    /// The labels in `a:b:` (a selector) or `a: 1, b: x` (a call; an unlabelled argument is `_`).
    static func labels(ofArguments text: String) -> (labels: [String], isSelector: Bool) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty { return ([], true) }
        let isSelector = trimmed.hasSuffix(":") && trimmed.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }
        if isSelector { return (trimmed.split(separator: ":").map(String.init), true) }
        let labels = SwiftSource.splitTopLevel(trimmed, at: ",").map { argument -> String in
            let argument = argument.trimmingCharacters(in: .whitespaces)
            let name = argument.prefix { $0.isLetter || $0.isNumber || $0 == "_" }
            let after = argument.dropFirst(name.count).drop { $0 == " " }
            return !name.isEmpty && after.first == ":" ? String(name) : "_"
        }
        return (labels, false)
    }
}

/// Just enough of Swift's lexical structure to find declarations.
enum SwiftSource {
    /// `text` with comments and the contents of string literals blanked out (the quotes and
    /// newlines stay), so that neither a doc comment nor a message declares anything.
    static func withoutComments(_ text: String) -> String {
        let characters = Array(text)
        var result = ""
        result.reserveCapacity(characters.count)
        var index = 0
        func starts(with literal: String) -> Bool {
            let pattern = Array(literal)
            guard index + pattern.count <= characters.count else { return false }
            return characters[index..<(index + pattern.count)].elementsEqual(pattern)
        }
        func blank(_ character: Character) { result.append(character == "\n" ? "\n" : " ") }
        while index < characters.count {
            if starts(with: "//") {
                while index < characters.count, characters[index] != "\n" { index += 1 }
            } else if starts(with: "/*") {
                var depth = 0
                repeat {
                    if starts(with: "/*") {
                        depth += 1
                        result += "  "
                        index += 2
                    } else if starts(with: "*/") {
                        depth -= 1
                        result += "  "
                        index += 2
                    } else {
                        blank(characters[index])
                        index += 1
                    }
                } while depth > 0 && index < characters.count
            } else if starts(with: "\"\"\"") {
                result += "\"\"\""
                index += 3
                while index < characters.count, !starts(with: "\"\"\"") {
                    if characters[index] == "\\" { blank(characters[index]); index += 1 }
                    if index < characters.count { blank(characters[index]); index += 1 }
                }
                result += "\"\"\""
                index += 3
            } else if characters[index] == "\"" {
                result.append("\"")
                index += 1
                while index < characters.count, characters[index] != "\"", characters[index] != "\n" {
                    if characters[index] == "\\" { blank(characters[index]); index += 1 }
                    if index < characters.count { blank(characters[index]); index += 1 }
                }
                if index < characters.count, characters[index] == "\"" { result.append("\""); index += 1 }
            } else {
                result.append(characters[index])
                index += 1
            }
        }
        return result
    }

    struct Token {
        let text: String
        let isIdentifier: Bool
    }

    static func tokens(in text: String) -> [Token] {
        var tokens: [Token] = []
        var current = ""
        for character in text {
            if character.isLetter || character.isNumber || character == "_" {
                current.append(character)
                continue
            }
            if !current.isEmpty {
                tokens.append(Token(text: current, isIdentifier: !(current.first?.isNumber ?? true)))
                current = ""
            }
            if !character.isWhitespace { tokens.append(Token(text: String(character), isIdentifier: false)) }
            else if character == "\n" { tokens.append(Token(text: "\n", isIdentifier: false)) }
        }
        if !current.isEmpty { tokens.append(Token(text: current, isIdentifier: !(current.first?.isNumber ?? true))) }
        return tokens
    }

    static func identifiers(in text: String) -> Set<String> {
        Set(tokens(in: text).filter(\.isIdentifier).map(\.text))
    }

    static let typeKeywords: Set<String> = ["struct", "class", "enum", "protocol", "actor", "typealias", "extension"]
    static let memberKeywords: Set<String> = ["func", "var", "let", "case"]

    /// The names `text` declares: types (and extended types), members, and enum cases.
    static func declarations(in text: String) -> (types: Set<String>, members: Set<String>, cases: Set<String>) {
        var types: Set<String> = []
        var members: Set<String> = []
        var cases: Set<String> = []
        let all = tokens(in: text).filter { $0.text != "\n" }
        var index = 0
        while index < all.count {
            let token = all[index]
            index += 1
            guard token.isIdentifier, index < all.count else { continue }
            if token.text == "init" {
                members.insert("init")
            } else if typeKeywords.contains(token.text), all[index].isIdentifier,
                !typeKeywords.contains(all[index].text), !memberKeywords.contains(all[index].text)
            {
                types.insert(all[index].text)
                // `extension Outer.Inner`: Inner is extended here too.
                var next = index + 1
                while next + 1 < all.count, all[next].text == ".", all[next + 1].isIdentifier {
                    types.insert(all[next + 1].text)
                    next += 2
                }
            } else if token.text == "case" {
                // `case a, b(x: Int), c` in an enum; `case .a` and `case let` in a switch are not declarations.
                var position = index
                while position < all.count, all[position].isIdentifier, all[position].text != "let", all[position].text != "var" {
                    members.insert(all[position].text)
                    cases.insert(all[position].text)
                    position += 1
                    if position < all.count, all[position].text == "(" {
                        position = skipBalanced(all, from: position)
                    }
                    guard position + 1 < all.count, all[position].text == "," else { break }
                    position += 1
                }
            } else if memberKeywords.contains(token.text), all[index].isIdentifier {
                members.insert(all[index].text)
            }
        }
        return (types, members, cases)
    }

    /// The index after the parenthesis that closes the one at `start`.
    static func skipBalanced(_ tokens: [Token], from start: Int) -> Int {
        var depth = 0
        var index = start
        while index < tokens.count {
            if tokens[index].text == "(" { depth += 1 }
            if tokens[index].text == ")" {
                depth -= 1
                if depth == 0 { return index + 1 }
            }
            index += 1
        }
        return index
    }

    /// The index of the bracket that closes the one at `start` (`(`, `[`, `{`, `<`; `->` is not a bracket).
    static func closingIndex(in text: Substring, from start: Substring.Index) -> Substring.Index? {
        var depth = 0
        var inString = false
        var index = start
        var previous: Character = " "
        while index < text.endIndex {
            let character = text[index]
            if character == "\"" { inString.toggle() }
            if !inString {
                if "([{<".contains(character) { depth += 1 }
                if ")]}".contains(character) || (character == ">" && previous != "-") {
                    depth -= 1
                    if depth == 0 { return index }
                }
            }
            previous = character
            index = text.index(after: index)
        }
        return nil
    }

    /// `text` split at `separator` where no bracket or string is open.
    static func splitTopLevel(_ text: String, at separator: Character) -> [String] {
        var parts: [String] = []
        var current = ""
        var depth = 0
        var inString = false
        var previous: Character = " "
        for character in text {
            if character == "\"" { inString.toggle() }
            if !inString {
                if "([{<".contains(character) { depth += 1 }
                if ")]}".contains(character) || (character == ">" && previous != "-") { depth -= 1 }
            }
            if character == separator, depth == 0, !inString {
                parts.append(current)
                current = ""
            } else {
                current.append(character)
            }
            previous = character
        }
        parts.append(current)
        return parts
    }

    /// The argument labels of every `keyword name(…)` declaration in `text` (`init(…)` when the
    /// keyword is `init`). An unlabelled parameter (`_ x: T`, or an enum payload `case a(T)`) is `_`.
    static func parameterLabels(of name: String, after keyword: String, in text: String) -> [[String]] {
        var results: [[String]] = []
        let needle = keyword == "init" ? "init" : "\(keyword) \(name)"
        var searchFrom = text.startIndex
        while let found = text.range(of: needle, range: searchFrom..<text.endIndex) {
            searchFrom = found.upperBound
            // Whole words only.
            if found.lowerBound > text.startIndex {
                let before = text[text.index(before: found.lowerBound)]
                if before.isLetter || before.isNumber || before == "_" || before == "." { continue }
            }
            var index = found.upperBound
            if index < text.endIndex, text[index] == "?" || text[index] == "!" { index = text.index(after: index) }
            while index < text.endIndex, text[index] == " " { index = text.index(after: index) }
            if index < text.endIndex, text[index] == "<" {
                guard let close = closingIndex(in: text[...], from: index) else { continue }
                index = text.index(after: close)
            }
            guard index < text.endIndex, text[index] == "(", let close = closingIndex(in: text[...], from: index) else { continue }
            let inside = String(text[text.index(after: index)..<close])
            let parameters = inside.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? [] : splitTopLevel(inside, at: ",")
            results.append(
                parameters.map { parameter in
                    let colonParts = splitTopLevel(parameter, at: ":")
                    guard colonParts.count > 1 else { return "_" }  // `case a(T)`: no label
                    let words = colonParts[0].split(whereSeparator: \.isWhitespace)
                    return words.first.map(String.init) ?? "_"
                })
        }
        return results
    }
}

/// Code spans and link targets in Markdown, with their line numbers; fenced code blocks skipped.
enum MarkdownSpans {
    enum Kind { case code, link }

    struct Span {
        let kind: Kind
        let text: String
        let line: Int
    }

    /// The anchors GitHub gives the headings of `text`: lowercased, punctuation dropped, spaces as `-`.
    static func headingAnchors(in text: String) -> Set<String> {
        var anchors: Set<String> = []
        var inFence = false
        for line in text.split(separator: "\n") {
            let trimmed = line.drop { $0 == " " }
            if trimmed.hasPrefix("```") || trimmed.hasPrefix("~~~") { inFence.toggle() }
            guard !inFence, line.hasPrefix("#") else { continue }
            let title = line.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces).lowercased()
            let kept = title.filter { $0.isLetter || $0.isNumber || $0 == " " || $0 == "-" || $0 == "_" }
            anchors.insert(kept.replacingOccurrences(of: " ", with: "-"))
        }
        return anchors
    }

    static func scan(_ text: String) -> [Span] {
        var spans: [Span] = []
        var inFence = false
        var paragraph: [(line: Int, text: String)] = []
        func flush() {
            spans += scan(paragraph: paragraph)
            paragraph.removeAll()
        }
        for (offset, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.drop { $0 == " " }
            if trimmed.hasPrefix("```") || trimmed.hasPrefix("~~~") {
                flush()
                inFence.toggle()
                continue
            }
            if inFence { continue }
            if trimmed.isEmpty { flush() } else { paragraph.append((offset + 1, String(line))) }
        }
        flush()
        return spans
    }

    /// A paragraph's code spans (which may run across a line break) and links outside them.
    static func scan(paragraph lines: [(line: Int, text: String)]) -> [Span] {
        var characters: [(Character, Int)] = []
        for (line, text) in lines {
            characters += text.map { ($0, line) }
            characters.append((" ", line))
        }
        var spans: [Span] = []
        var index = 0
        while index < characters.count {
            let (character, line) = characters[index]
            if character == "`" {
                var run = 0
                while index + run < characters.count, characters[index + run].0 == "`" { run += 1 }
                // The span ends at the next run of exactly as many backticks.
                var end = index + run
                var found: Int?
                while end < characters.count {
                    if characters[end].0 == "`" {
                        var other = 0
                        while end + other < characters.count, characters[end + other].0 == "`" { other += 1 }
                        if other == run {
                            found = end
                            break
                        }
                        end += other
                    } else {
                        end += 1
                    }
                }
                guard let close = found else {
                    index += run
                    continue
                }
                let content = String(characters[(index + run)..<close].map(\.0)).trimmingCharacters(in: .whitespaces)
                if !content.isEmpty { spans.append(Span(kind: .code, text: content, line: line)) }
                index = close + run
                continue
            }
            if character == "]", index + 1 < characters.count, characters[index + 1].0 == "(" {
                var end = index + 2
                while end < characters.count, characters[end].0 != ")", characters[end].0 != " " { end += 1 }
                if end < characters.count, characters[end].0 == ")" {
                    let target = String(characters[(index + 2)..<end].map(\.0))
                    if !target.isEmpty { spans.append(Span(kind: .link, text: target, line: line)) }
                    index = end + 1
                    continue
                }
            }
            index += 1
        }
        return spans
    }
}
