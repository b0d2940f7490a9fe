/// The kernel command line, built and checked before it reaches the guest (boot.rst, "The Kernel
/// Command Line": a NUL-terminated string of at most `cmdline_size` bytes, NUL excluded).
///
/// Fragments are joined with single spaces. An append that would break a rule throws and leaves
/// the command line as it was.
public struct KernelCommandLine: Equatable, Sendable, CustomStringConvertible {
    /// The longest command line accepted, in bytes, the terminating NUL excluded.
    public let maximumLength: Int
    /// The command line's bytes (UTF-8), without the terminating NUL.
    public private(set) var bytes: [UInt8] = []

    /// An empty command line that accepts up to `maximumLength` bytes (NUL excluded; a negative
    /// limit counts as 0).
    public init(maximumLength: Int) {
        self.maximumLength = max(0, maximumLength)
    }

    /// An empty command line limited to what `kernel` accepts (`cmdline_size`) and what fits in the
    /// loader's command-line area (`LinuxBootLayout.commandLineCapacity`, NUL included).
    public init(for kernel: BzImage) {
        let areaLimit = LinuxBootLayout.commandLineCapacity - 1
        self.init(maximumLength: min(Int(kernel.commandLineSize), areaLimit))
    }

    /// Builds a command line from `text` at once.
    public init(_ text: String, maximumLength: Int) throws(LinuxBootError) {
        self.init(maximumLength: maximumLength)
        try append(text)
    }

    /// The length in bytes, NUL excluded.
    public var count: Int { bytes.count }
    public var isEmpty: Bool { bytes.isEmpty }
    /// What the guest receives: the bytes and a terminating NUL.
    public var nulTerminatedBytes: [UInt8] { bytes + [0] }
    public var description: String { String(decoding: bytes, as: UTF8.self) }

    /// Appends one or more space-separated words (`console=ttyS0 quiet`), trimming spaces around
    /// them. Throws if `fragment` contains NUL or the result would pass `maximumLength`.
    public mutating func append(_ fragment: String) throws(LinuxBootError) {
        let words = Array(fragment.utf8)
        guard !words.contains(0) else { throw .commandLineContainsNUL(fragment: fragment) }
        let isBlank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        guard let first = words.firstIndex(where: { !isBlank($0) }),
            let last = words.lastIndex(where: { !isBlank($0) })
        else { return }
        try appendChecked(words[first...last])
    }

    /// Appends `key=value`. The key must be non-empty, without whitespace, `=` or `"`; a value with
    /// whitespace is double-quoted (`key="a b"`, which the kernel's parser accepts); a value with
    /// `"` or NUL is refused.
    public mutating func append(key: String, value: String) throws(LinuxBootError) {
        guard !key.utf8.contains(0), !value.utf8.contains(0) else {
            throw .commandLineContainsNUL(fragment: key + "=" + value)
        }
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || ($0 >= 0x09 && $0 <= 0x0D) }
        guard !key.isEmpty, !key.utf8.contains(where: { isSpace($0) || $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: "\"") })
        else { throw .commandLineInvalidKey(key: key) }
        guard !value.utf8.contains(UInt8(ascii: "\"")) else { throw .commandLineInvalidValue(key: key, value: value) }
        let needsQuotes = value.utf8.contains(where: isSpace)
        let pair = key + "=" + (needsQuotes ? "\"" + value + "\"" : value)
        try appendChecked(ArraySlice(pair.utf8))
    }

    private mutating func appendChecked(_ word: ArraySlice<UInt8>) throws(LinuxBootError) {
        let separator = bytes.isEmpty ? 0 : 1
        let (withSeparator, overflow1) = bytes.count.addingReportingOverflow(separator)
        let (length, overflow2) = withSeparator.addingReportingOverflow(word.count)
        guard !overflow1, !overflow2, length <= maximumLength else {
            throw .commandLineTooLong(length: overflow1 || overflow2 ? Int.max : length, maximum: maximumLength)
        }
        if separator == 1 { bytes.append(0x20) }
        bytes.append(contentsOf: word)
    }
}
