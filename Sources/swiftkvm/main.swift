import ArgumentParser
import Dispatch
import Glibc
import Synchronization
import VMM

/// `swiftkvm`: runs guests on /dev/kvm.
struct SwiftKVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftkvm",
        abstract: "A KVM hypervisor written in Swift.",
        discussion: """
            Runs a flat firmware binary in real, protected, long or user mode. Bytes the guest writes \
            to COM1 (port 0x3F8) appear on standard output; a byte written to port 0xF4 ends the guest \
            and becomes the exit status; HLT ends it with status 0.
            """,
        subcommands: [Run.self])
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a guest.",
        discussion: """
            Exit status: the guest's debug-exit byte; 0 after HLT or a triple fault (the reason is \
            printed on standard error); 124 when --time-limit passes; 130/143 after SIGINT/SIGTERM; \
            1 when the guest fails (an exception, a KVM error); 2 for bad input.

            Example: swiftkvm run --firmware Firmware/build/hello-long.bin --mode long
            """)

    @Option(name: .long, help: ArgumentHelp("A flat binary to run.", valueName: "file"))
    var firmware: String

    @Option(name: .long, help: "The CPU mode the guest starts in: real, protected, long or user.")
    var mode: String = "long"

    @Option(name: .long, help: ArgumentHelp("Guest RAM, e.g. 2M, 64K, 1G.", valueName: "size"))
    var memory: String = "2M"

    @Option(name: .long, help: ArgumentHelp("Guest address the binary is copied to.", valueName: "address"))
    var load: String = "0"

    @Option(name: .long, help: ArgumentHelp("Guest address of the first instruction (default: the load address).", valueName: "address"))
    var entry: String?

    @Option(name: .long, help: ArgumentHelp("Stop the guest after this many seconds (default: no limit).", valueName: "seconds"))
    var timeLimit: Double?

    func run() throws {
        guard let cpuMode = CPUMode(rawValue: mode) else {
            throw UsageError("--mode must be real, protected, long or user, not '\(mode)'")
        }
        guard let memorySize = CommandLineValues.size(memory), memorySize > 0 else {
            throw UsageError("--memory '\(memory)' is not a size: write it like 2M, 64K or 1G")
        }
        let hostMemory = Int(sysconf(Int32(_SC_PHYS_PAGES))) &* Int(sysconf(Int32(_SC_PAGESIZE)))
        if hostMemory > 0, memorySize > hostMemory {
            throw UsageError(
                "--memory \(memory) is more than this host's \(CommandLineValues.describe(size: hostMemory)) of RAM: give less")
        }
        guard let loadAddress = CommandLineValues.address(load) else {
            throw UsageError("--load '\(load)' is not an address: write it like 0x7c00 or 31744")
        }
        var entryAddress: UInt64?
        if let entry {
            guard let parsed = CommandLineValues.address(entry) else {
                throw UsageError("--entry '\(entry)' is not an address: write it like 0x7c00 or 31744")
            }
            entryAddress = parsed
        }
        var limit: Duration?
        if let timeLimit {
            guard timeLimit > 0, timeLimit < 1e9 else { throw UsageError("--time-limit must be a positive number of seconds") }
            limit = .milliseconds(Int64(timeLimit * 1000))
        }

        let guest: UnitGuest
        do {
            guest = try UnitGuest(
                contentsOf: firmware, mode: cpuMode, memorySize: memorySize, loadAddress: GuestAddress(loadAddress),
                entry: entryAddress.map { GuestAddress($0) }, timeLimit: limit)
            try guest.validate()
        } catch {
            throw UsageError("\(error)")
        }

        let stopper = SignalStopper()
        let result: GuestRun
        do {
            result = try guest.run(console: { byte in ConsoleOutput.write(byte) }, started: { stopper.watch($0) })
        } catch {
            throw RuntimeFailure("\(error)")
        }
        ConsoleOutput.flush()
        let (status, reason) = Self.exitStatus(for: result.outcome, signal: stopper.signal)
        if let reason { printError(reason) }
        throw ExitCode(status)
    }

    /// The process exit status for an outcome, and the line to print about it (if any).
    static func exitStatus(for outcome: GuestOutcome, signal: Int32?) -> (Int32, String?) {
        switch outcome {
        case .exited(let status): return (Int32(status), nil)
        case .halted: return (0, nil)
        case .shutdown: return (0, outcome.description)
        case .timedOut: return (124, outcome.description)
        case .stopped: return (128 + (signal ?? SIGTERM), "stopped by signal \(signal ?? SIGTERM)")
        case .exception, .failedEntry, .internalError, .unhandledExit, .vmmError: return (1, outcome.description)
        }
    }
}

/// Bad input: printed as one line, exit status 2.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The VMM failed while running: printed as one line, exit status 1.
struct RuntimeFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Guest console bytes to standard output, unbuffered enough that a prompt shows at once.
enum ConsoleOutput {
    static func write(_ byte: UInt8) {
        var value = byte
        while Glibc.write(STDOUT_FILENO, &value, 1) < 0 && errno == EINTR {}
    }

    static func flush() { fflush(stdout) }
}

/// Turns SIGINT and SIGTERM into a clean stop of the running machine.
final class SignalStopper: @unchecked Sendable {
    private let state = Mutex<(machine: Machine?, signal: Int32?)>((nil, nil))
    private var sources: [DispatchSourceSignal] = []

    init() {
        for number in [SIGINT, SIGTERM] {
            Glibc.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [weak self] in self?.stop(signal: number) }
            source.resume()
            sources.append(source)
        }
    }

    var signal: Int32? { state.withLock { $0.signal } }

    func watch(_ machine: Machine) {
        let pending = state.withLock { current -> Int32? in
            current.machine = machine
            return current.signal
        }
        if pending != nil { machine.requestStop(.stopped) }
    }

    private func stop(signal number: Int32) {
        let machine = state.withLock { current -> Machine? in
            if current.signal == nil { current.signal = number }
            return current.machine
        }
        machine?.requestStop(.stopped)
    }
}

func printError(_ line: String) {
    fputs("swiftkvm: \(line)\n", stderr)
}

// Parse and run by hand so every failure is one line and a chosen exit status, never a trap.
do {
    var command = try SwiftKVM.parseAsRoot()
    try command.run()
} catch let error as UsageError {
    printError(error.description)
    exit(2)
} catch let error as RuntimeFailure {
    printError(error.description)
    exit(1)
} catch let code as ExitCode {
    exit(code.rawValue)
} catch {
    let status = SwiftKVM.exitCode(for: error)
    if status == .success {
        SwiftKVM.exit(withError: error)  // --help, --version
    }
    printError(SwiftKVM.message(for: error) + " (see 'swiftkvm run --help')")
    exit(2)
}
