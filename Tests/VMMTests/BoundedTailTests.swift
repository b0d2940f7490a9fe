import Testing

@testable import VMM

/// Collectors of guest output keep a bounded tail and count what they dropped.
struct BoundedTailTests {
    @Test func keepsTheLastElementsAndCountsTheRest() {
        var tail = BoundedTail<Int>(limit: 100)
        var droppedByCalls = 0
        for value in 0..<10_000 { droppedByCalls += tail.append(value) }
        #expect(tail.elements.count >= 100 && tail.elements.count < 125)
        #expect(tail.elements.last == 9_999)
        #expect(tail.elements.first == tail.dropped, "what is kept follows what was dropped, in order")
        #expect(tail.dropped + tail.elements.count == 10_000)
        #expect(droppedByCalls == tail.dropped)
    }

    @Test func aShortStreamIsKeptWhole() {
        var tail = BoundedTail<UInt8>(limit: 64)
        for byte in UInt8(0)..<64 { tail.append(byte) }
        #expect(tail.elements == Array(0..<64))
        #expect(tail.dropped == 0)
        var tiny = BoundedTail<UInt8>(limit: 0)
        for byte in UInt8(0)..<10 { tiny.append(byte) }
        #expect(tiny.elements == [9] && tiny.dropped == 9)
    }

    @Test func anInMemoryExitTraceIsBounded() {
        let trace = ExitTrace.inMemory(lineLimit: 1000)
        for index in 0..<50_000 { trace.record("vcpu0 io out port=0x3f8 size=1 data=\(index)") }
        #expect(trace.lines.count >= 1000 && trace.lines.count < 1250)
        #expect(trace.lines.last == "vcpu0 io out port=0x3f8 size=1 data=49999")
        #expect(trace.droppedLines + trace.lines.count == 50_000)
    }
}
