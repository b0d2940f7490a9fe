import Glibc

// What these targets used from Foundation proper (NSLock, Thread, trimmingCharacters) and
// FoundationEssentials lacks: `swiftkvm` links FoundationEssentials only (no libFoundation,
// FoundationInternationalization or ICU), which keeps the VMM's resident memory down.

/// A plain mutex (what NSLock was here): `lock()` / `unlock()`, not recursive.
public final class PlainLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }
}

/// A detached OS thread running a closure (what `Thread { … }.start()` was here).
public enum DetachedThread {
    private final class Start {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts `body` on a new detached thread with a stack of `stackSize` bytes (0: the default).
    /// Returns false if the thread could not be started.
    @discardableResult
    public static func start(stackSize: Int = 0, _ body: @escaping () -> Void) -> Bool {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        if stackSize > 0 { pthread_attr_setstacksize(&attributes, max(stackSize, Int(PTHREAD_STACK_MIN))) }
        let start = Unmanaged.passRetained(Start(body)).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, &attributes, { argument in
            guard let argument else { return nil }
            Unmanaged<Start>.fromOpaque(argument).takeRetainedValue().body()
            return nil
        }, start)
        if result != 0 {
            Unmanaged<Start>.fromOpaque(start).release()
            return false
        }
        return true
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces and tabs (`trimmingCharacters(in: .whitespaces)`
    /// for the ASCII text it is used on; Unicode horizontal spaces are trimmed too).
    public func trimmingWhitespace() -> String {
        func blank(_ c: Character) -> Bool { c == " " || c == "\t" || (c.isWhitespace && !c.isNewline) }
        guard let first = firstIndex(where: { !blank($0) }) else { return "" }
        let last = lastIndex(where: { !blank($0) })!
        return String(self[first...last])
    }
}

extension String {
    /// Every occurrence of `target` replaced by `replacement`, compared scalar by scalar
    /// (`replacingOccurrences(of:with:)` for the ASCII targets it is used with: "\n" inside "\r\n"
    /// is found too, unlike Character-wise `replacing`).
    public func replacingAll(_ target: String, with replacement: String) -> String {
        let pattern = Array(target.unicodeScalars)
        guard !pattern.isEmpty else { return self }
        let scalars = Array(unicodeScalars)
        var out = String.UnicodeScalarView()
        var index = 0
        while index < scalars.count {
            if index + pattern.count <= scalars.count, scalars[index] == pattern[0],
                Array(scalars[index..<index + pattern.count]) == pattern
            {
                out.append(contentsOf: replacement.unicodeScalars)
                index += pattern.count
            } else {
                out.append(scalars[index])
                index += 1
            }
        }
        return String(out)
    }
}
