/// Parsing the sizes and addresses users type: `256M`, `1G`, `0x7c00`.
public enum CommandLineValues {
    /// A byte count: a decimal number with an optional binary suffix `K`, `M`, `G` or `T`
    /// (also `KiB`, `MB`, …: all mean powers of 1024), or a `0x` hexadecimal number.
    /// Returns nil for anything else, or for a value that does not fit in an `Int`.
    public static func size(_ text: String) -> Int? {
        let trimmed = text.trimmingSpaces()
        if let hex = hexadecimal(trimmed) { return Int(exactly: hex) }
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let value = Int(digits) else { return nil }
        let shift: Int
        switch trimmed.dropFirst(digits.count).uppercased() {
        case "", "B": shift = 0
        case "K", "KB", "KIB": shift = 10
        case "M", "MB", "MIB": shift = 20
        case "G", "GB", "GIB": shift = 30
        case "T", "TB", "TIB": shift = 40
        default: return nil
        }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : result
    }

    /// A guest address: `0x` hexadecimal or decimal.
    public static func address(_ text: String) -> UInt64? {
        let trimmed = text.trimmingSpaces()
        return hexadecimal(trimmed) ?? UInt64(trimmed)
    }

    static func hexadecimal(_ text: String) -> UInt64? {
        guard text.hasPrefix("0x") || text.hasPrefix("0X") else { return nil }
        return UInt64(text.dropFirst(2), radix: 16)
    }

    /// "2 MiB", "1.5 KiB", "100 bytes": the size in the largest binary unit it reaches, to a tenth.
    public static func describe(size: Int) -> String {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] where size >= 1 << shift {
            if size % (1 << shift) == 0 { return "\(size >> shift) \(unit)" }
            // Rounded to tenths without computing size × 10, which overflows above Int.max / 10.
            let rest = size & ((1 << shift) - 1)
            let tenths = (size >> shift) * 10 + (rest * 10 + (1 << (shift - 1))) >> shift
            return "\(tenths / 10).\(tenths % 10) \(unit)"
        }
        return "\(size) bytes"
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
