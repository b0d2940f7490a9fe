import CLibXML2

/// Why a document could not be read. Each is one line that says what is wrong and what would work.
public enum XMLReadError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Longer than `XMLLimits.maximumBytes`.
    case tooLarge(bytes: Int, limit: Int)
    /// Empty, or only white space.
    case empty
    /// A `<!DOCTYPE>`: its internal subset could declare entities that expand without end (billion
    /// laughs) or load external files; libvirt never writes one.
    case doctype
    /// Elements nested deeper than `XMLLimits.maximumDepth`.
    case tooDeep(limit: Int)
    /// Not well-formed XML: libxml2's own message and the line it stopped at.
    case malformed(line: Int, message: String)
    /// The root element is not the one expected.
    case wrongRoot(found: String, expected: String)

    public var description: String {
        switch self {
        case .tooLarge(let bytes, let limit):
            "the document is \(bytes) bytes, more than the \(limit) a domain description can be: is this the right file?"
        case .empty: "the document is empty: give a libvirt domain XML file (virsh dumpxml NAME)"
        case .doctype:
            "the document has a <!DOCTYPE>, which can declare entities or load other files: remove it (libvirt never writes one)"
        case .tooDeep(let limit): "elements are nested more than \(limit) deep, far more than any domain description: is this the right file?"
        case .malformed(let line, let message): "not well-formed XML at line \(line): \(message)"
        case .wrongRoot(let found, let expected):
            "the root element is <\(found)>, not <\(expected)>: give a libvirt domain XML file (virsh dumpxml NAME)"
        }
    }
}

/// Bounds on what is read, checked before and while parsing.
public enum XMLLimits {
    /// A domain description is a few KiB; 1 MiB leaves room for long descriptions and metadata.
    public static let maximumBytes = 1 << 20
    /// A domain description nests about 5 deep (domain/devices/disk/driver); libxml2 itself stops at 256.
    public static let maximumDepth = 64
}

/// An element as plain data: no libxml2 pointer outlives the parse.
public struct XMLNode: Equatable, Sendable {
    /// The qualified name (`prefix:local` for namespaced elements).
    public var name: String
    /// The namespace URI, for elements in one.
    public var namespace: String?
    /// Attributes in document order.
    public var attributes: [(name: String, value: String)]
    public var children: [XMLNode]
    /// The element's own text (text and CDATA children joined), entities already decoded.
    public var text: String
    /// The line in the document, for messages.
    public var line: Int

    public init(name: String, attributes: [(name: String, value: String)] = [], children: [XMLNode] = [], text: String = "", line: Int = 0) {
        self.name = name
        self.attributes = attributes
        self.children = children
        self.text = text
        self.line = line
    }

    public subscript(attribute name: String) -> String? { attributes.first { $0.name == name }?.value }

    public func child(_ name: String) -> XMLNode? { children.first { $0.name == name } }

    public func children(_ name: String) -> [XMLNode] { children.filter { $0.name == name } }

    public static func == (a: XMLNode, b: XMLNode) -> Bool {
        a.name == b.name && a.text == b.text && a.children == b.children
            && a.attributes.map(\.name) == b.attributes.map(\.name) && a.attributes.map(\.value) == b.attributes.map(\.value)
    }
}

/// Reads XML safely with libxml2: no network (`XML_PARSE_NONET`), no entity substitution (no
/// `XML_PARSE_NOENT`), no DTD loading (no `XML_PARSE_DTDLOAD`), and no DOCTYPE at all; the size is
/// checked before parsing and the depth while the tree is copied out.
public enum XMLReader {
    /// libxml2 asks that `xmlInitParser` run once before threads parse (parser.h).
    private static let initialized: Bool = {
        xmlInitParser()
        return true
    }()

    public static func parse(_ bytes: [UInt8], root expected: String? = nil) throws(XMLReadError) -> XMLNode {
        guard bytes.count <= XMLLimits.maximumBytes else { throw .tooLarge(bytes: bytes.count, limit: XMLLimits.maximumBytes) }
        try checkProlog(bytes)
        _ = initialized
        guard let context = xmlNewParserCtxt() else { throw .malformed(line: 0, message: "libxml2 could not make a parser (out of memory)") }
        defer { xmlFreeParserCtxt(context) }
        let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
        let document = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { chars in
                xmlCtxtReadMemory(context, chars.baseAddress, Int32(chars.count), "domain.xml", nil, options)
            }
        }
        guard let document else {
            if let error = xmlCtxtGetLastError(context) {
                let message = error.pointee.message.map { String(cString: $0) } ?? "parse error"
                throw .malformed(line: Int(error.pointee.line), message: oneLine(message))
            }
            throw .malformed(line: 0, message: "parse error")
        }
        defer { xmlFreeDoc(document) }
        // Belt and braces: the prolog check already refused any DOCTYPE.
        guard document.pointee.intSubset == nil, document.pointee.extSubset == nil else { throw .doctype }
        guard let rootPointer = xmlDocGetRootElement(document) else { throw .empty }
        let root = try copy(rootPointer, depth: 1)
        if let expected, root.name != expected { throw .wrongRoot(found: root.name, expected: expected) }
        return root
    }

    /// Looks through the prolog (XML 1.0 §2.8: the XML declaration, comments, processing
    /// instructions, white space) for a document type declaration, before libxml2 sees it.
    static func checkProlog(_ bytes: [UInt8]) throws(XMLReadError) {
        var index = 0
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
        func skipPast(_ end: [UInt8]) -> Bool {
            var i = index
            while i + end.count <= bytes.count {
                if bytes[i..<(i + end.count)].elementsEqual(end) {
                    index = i + end.count
                    return true
                }
                i += 1
            }
            index = bytes.count
            return false
        }
        func starts(_ text: String) -> Bool { bytes[index...].starts(with: Array(text.utf8)) }
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            case UInt8(ascii: "<"):
                if starts("<?") {
                    guard skipPast(Array("?>".utf8)) else { return }
                } else if starts("<!--") {
                    guard skipPast(Array("-->".utf8)) else { return }
                } else if starts("<!") {
                    throw .doctype
                } else {
                    return  // the root element: the prolog is over
                }
            default: return  // not XML; libxml2 says so
            }
        }
        throw .empty
    }

    private static func copy(_ pointer: xmlNodePtr, depth: Int) throws(XMLReadError) -> XMLNode {
        guard depth <= XMLLimits.maximumDepth else { throw .tooDeep(limit: XMLLimits.maximumDepth) }
        let element = pointer.pointee
        var name = element.name.map { String(cString: $0) } ?? ""
        if let namespace = element.ns, let prefix = namespace.pointee.prefix { name = String(cString: prefix) + ":" + name }
        var node = XMLNode(name: name, line: Int(xmlGetLineNo(pointer)))
        if let namespace = element.ns, let href = namespace.pointee.href { node.namespace = String(cString: href) }
        var attribute = element.properties
        while let current = attribute {
            let attributeName = current.pointee.name.map { String(cString: $0) } ?? ""
            var value = ""
            if let raw = xmlNodeListGetString(element.doc, current.pointee.children, 1) {
                value = String(cString: raw)
                xmlFree(raw)
            }
            node.attributes.append((attributeName, value))
            attribute = current.pointee.next
        }
        var child = element.children
        while let current = child {
            switch current.pointee.type {
            case XML_ELEMENT_NODE: node.children.append(try copy(current, depth: depth + 1))
            case XML_TEXT_NODE, XML_CDATA_SECTION_NODE:
                if let content = current.pointee.content { node.text += String(cString: content) }
            default: break  // comments, processing instructions
            }
            child = current.pointee.next
        }
        return node
    }

    static func oneLine(_ text: String) -> String {
        text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).joined(separator: " ").trimmingCharacters(in: " ")
    }
}

fileprivate extension String {
    func trimmingCharacters(in set: Character) -> String {
        var slice = Substring(self)
        while slice.first == set { slice = slice.dropFirst() }
        while slice.last == set { slice = slice.dropLast() }
        return String(slice)
    }
}
