/// Everything measured, both sides.
struct Results {
    var swiftRoundTrips: [UInt64] = []
    var baselineRoundTrips: [UInt64] = []
    var swiftExitRates: [ExitRateSample] = []
    var baselineExitRates: [ExitRateSample] = []
    var swiftProbeBoots: [ProbeBootSample] = []
    var qemuProbeBoots: [ProbeBootSample] = []
}

/// Whether a target was met, for the verdict column and the exit status.
enum Verdict: String {
    case meets, misses
}

/// The comparison tables: against the C baseline, and against QEMU.
struct Report {
    static let roundTripTargetNanoseconds = 1_000_000.0
    /// Ours must reach at least this fraction of C's exit rate.
    static let exitRateTargetFraction = 0.90

    let results: Results
    private(set) var verdicts: [Verdict] = []
    private var rows: [[String]] = []
    private var probeRows: [[String]] = []

    init(results: Results) {
        self.results = results
        build()
    }

    private mutating func build() {
        buildProbe()
        guard !results.swiftRoundTrips.isEmpty || !results.swiftExitRates.isEmpty else { return }
        rows.append(["metric", "swiftkvm", "C baseline", "ratio (ours/C)", "target", "verdict"])
        if let ours = Summary(results.swiftRoundTrips.map { Double($0) }),
            let theirs = Summary(results.baselineRoundTrips.map { Double($0) })
        {
            let verdict: Verdict = ours.median < Self.roundTripTargetNanoseconds ? .meets : .misses
            verdicts.append(verdict)
            rows.append(["VM round trip, median", Self.milliseconds(ours.median), Self.milliseconds(theirs.median),
                         Self.ratio(ours.median, theirs.median), "< 1 ms", verdict.rawValue])
            rows.append(["VM round trip, min", Self.milliseconds(ours.minimum), Self.milliseconds(theirs.minimum),
                         Self.ratio(ours.minimum, theirs.minimum), "", ""])
            rows.append(["VM round trip, p90", Self.milliseconds(ours.p90), Self.milliseconds(theirs.p90),
                         Self.ratio(ours.p90, theirs.p90), "", ""])
        }
        if let ours = Summary(results.swiftExitRates.map(\.perSecond)),
            let theirs = Summary(results.baselineExitRates.map(\.perSecond))
        {
            let ratio = theirs.median > 0 ? ours.median / theirs.median : 0
            let verdict: Verdict = ratio >= Self.exitRateTargetFraction ? .meets : .misses
            verdicts.append(verdict)
            rows.append(["port-I/O exits/s, median", Self.rate(ours.median), Self.rate(theirs.median),
                         Self.ratio(ours.median, theirs.median), "within 10% of C", verdict.rawValue])
            rows.append(["port-I/O exits/s, p10 (slow end)", Self.rate(ours.p10), Self.rate(theirs.p10),
                         Self.ratio(ours.p10, theirs.p10), "", ""])
            rows.append(["time per port-I/O exit, median", Self.microseconds(1e9 / ours.median),
                         Self.microseconds(1e9 / theirs.median), Self.ratio(theirs.median, ours.median), "", ""])
        }
    }

    /// Spawn → first output byte and spawn → exit, both sides; the target is to be faster than QEMU.
    private mutating func buildProbe() {
        guard let ours = Summaries(results.swiftProbeBoots), let theirs = Summaries(results.qemuProbeBoots) else { return }
        probeRows.append(["boot probe, from spawn", "swiftkvm", "QEMU microvm", "ratio (ours/QEMU)", "target", "verdict"])
        for (name, ourSummary, theirSummary) in [
            ("to first output", ours.firstOutput, theirs.firstOutput), ("to exit", ours.exit, theirs.exit),
        ] {
            let verdict: Verdict = ourSummary.median < theirSummary.median ? .meets : .misses
            verdicts.append(verdict)
            probeRows.append(["\(name), median", Self.milliseconds(ourSummary.median), Self.milliseconds(theirSummary.median),
                              Self.ratio(ourSummary.median, theirSummary.median), "faster than QEMU", verdict.rawValue])
            probeRows.append(["\(name), min", Self.milliseconds(ourSummary.minimum), Self.milliseconds(theirSummary.minimum),
                              Self.ratio(ourSummary.minimum, theirSummary.minimum), "", ""])
            probeRows.append(["\(name), p90", Self.milliseconds(ourSummary.p90), Self.milliseconds(theirSummary.p90),
                              Self.ratio(ourSummary.p90, theirSummary.p90), "", ""])
        }
    }

    /// Order statistics of one side's probe boots.
    private struct Summaries {
        let firstOutput: Summary
        let exit: Summary

        init?(_ samples: [ProbeBootSample]) {
            guard let firstOutput = Summary(samples.map { Double($0.firstOutput) }),
                let exit = Summary(samples.map { Double($0.exit) })
            else { return nil }
            (self.firstOutput, self.exit) = (firstOutput, exit)
        }
    }

    var allTargetsMet: Bool { verdicts.allSatisfy { $0 == .meets } }

    /// The C-baseline table ("" when that part did not run).
    var table: String { Self.render(rows) }
    /// The QEMU table ("" when that part did not run).
    var probeTable: String { Self.render(probeRows) }

    private static func render(_ rows: [[String]]) -> String {
        guard !rows.isEmpty else { return "" }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.enumerated().map { index, row in
            let line = row.enumerated().map { column, cell in
                // Text columns left-aligned, numbers right-aligned.
                let pad = String(repeating: " ", count: widths[column] - cell.count)
                return column == 0 || column >= 4 || index == 0 ? cell + pad : pad + cell
            }.joined(separator: "  ")
            var trimmed = line
            while trimmed.last == " " { trimmed.removeLast() }
            return index == 0 ? trimmed + "\n" + widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") : trimmed
        }.joined(separator: "\n")
    }

    static func milliseconds(_ nanoseconds: Double) -> String { fixed(nanoseconds / 1e6, 3) + " ms" }
    static func microseconds(_ nanoseconds: Double) -> String { fixed(nanoseconds / 1e3, 2) + " µs" }
    static func rate(_ perSecond: Double) -> String { grouped(Int(perSecond.rounded())) + " /s" }
    static func ratio(_ ours: Double, _ theirs: Double) -> String { theirs > 0 ? fixed(ours / theirs, 2) : "n/a" }

    /// `value` with exactly `digits` decimals (no Foundation).
    static func fixed(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = Int((value * scale).rounded())
        let whole = scaled / Int(scale)
        let fraction = String(abs(scaled % Int(scale)))
        guard digits > 0 else { return String(whole) }
        return "\(scaled < 0 && whole == 0 ? "-" : "")\(whole)." + String(repeating: "0", count: digits - fraction.count) + fraction
    }

    /// 165000 → "165,000".
    static func grouped(_ value: Int) -> String {
        let digits = Array(String(value))
        var text = ""
        for (index, digit) in digits.enumerated() {
            if index > 0, (digits.count - index) % 3 == 0 { text += "," }
            text.append(digit)
        }
        return text
    }
}
