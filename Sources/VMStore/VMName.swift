/// The name of a kept VM: 1 to 63 characters of `[a-z0-9._-]`, starting with a letter or digit, so
/// it is a file name, a systemd unit instance and a host name part at once.
public enum VMName {
    public static let maximumLength = 63

    /// Nil when `name` is valid, else the one line that says what is wrong and what to do.
    public static func problem(with name: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { return "a VM name cannot be empty: use 1 to 63 of a-z, 0-9, '.', '_' and '-'" }
        guard bytes.count <= maximumLength else {
            return "the VM name '\(name)' is \(bytes.count) characters long: use at most \(maximumLength)"
        }
        func isAlphanumeric(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        guard isAlphanumeric(bytes[0]) else {
            return "the VM name '\(name)' must start with a lower-case letter or a digit"
        }
        for byte in bytes where !isAlphanumeric(byte) && byte != UInt8(ascii: ".") && byte != UInt8(ascii: "_") && byte != UInt8(ascii: "-") {
            let shown = byte >= 0x20 && byte < 0x7F ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(String(byte, radix: 16))"
            return "the VM name '\(name)' has \(shown): use only a-z, 0-9, '.', '_' and '-'"
        }
        return nil
    }

    public static func isValid(_ name: String) -> Bool { problem(with: name) == nil }
}
