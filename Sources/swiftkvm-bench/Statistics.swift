import Glibc

/// CLOCK_MONOTONIC in nanoseconds: the clock the C baseline uses too.
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Order statistics of a set of samples, computed the way the C baseline computes them.
struct Summary {
    let count: Int
    let median: Double
    let minimum: Double
    let maximum: Double
    /// Nearest rank: the ⌈0.9 n⌉-th smallest sample.
    let p90: Double
    /// Nearest rank: the ⌈0.1 n⌉-th smallest sample (the slow end of a rate).
    let p10: Double

    init?(_ samples: [Double]) {
        guard !samples.isEmpty else { return nil }
        let sorted = samples.sorted()
        let n = sorted.count
        count = n
        median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        minimum = sorted[0]
        maximum = sorted[n - 1]
        p90 = sorted[(n * 9 + 9) / 10 - 1]
        p10 = sorted[max((n + 9) / 10 - 1, 0)]
    }
}
