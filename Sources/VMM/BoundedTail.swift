/// The last `limit` elements of a stream that may never end (a guest's console, an exit trace),
/// and how many came before them: memory stays bounded however long a guest prints.
///
/// Elements are dropped from the front in chunks of a quarter of the limit, so appending stays
/// amortised O(1); `elements` holds between `limit` and 1.25 × `limit` once the stream is long.
struct BoundedTail<Element> {
    let limit: Int
    private(set) var elements: [Element] = []
    /// Elements dropped from the front so far.
    private(set) var dropped = 0

    /// `limit` below 1 is taken as 1.
    init(limit: Int) { self.limit = max(limit, 1) }

    /// Appends `element`; returns how many elements were dropped from the front by this call (so
    /// an index into `elements` can be moved back by as much).
    @discardableResult
    mutating func append(_ element: Element) -> Int {
        elements.append(element)
        let slack = max(limit / 4, 1)
        guard elements.count >= limit + slack else { return 0 }
        let excess = elements.count - limit
        elements.removeFirst(excess)
        dropped += excess
        return excess
    }
}
