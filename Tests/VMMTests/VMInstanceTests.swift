import Dispatch
import Glibc
import Synchronization
import Testing
import VMConfig
import VMM

/// A VM's life: what power-off, reboot and crash do (destroy, restart, preserve), the power
/// button, a hard reset and stops, with firmware guests.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct VMInstanceTests {
    /// Runs `instance` on a thread of its own; `body` gets it while it runs.
    static func running(
        _ instance: VMInstance, paused: Bool = false, within seconds: Double = 120, _ body: (VMInstance) throws -> Void = { _ in }
    ) throws -> VMInstance.Report {
        let result = Mutex<Result<VMInstance.Report, VMMError>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            let report = Result { () throws(VMMError) -> VMInstance.Report in try instance.run(paused: paused) }
            result.withLock { $0 = report }
            finished.signal()
        }
        let failure = Result { try body(instance) }
        if finished.wait(timeout: .now() + seconds) == .timedOut {
            instance.stop()
            _ = finished.wait(timeout: .now() + 30)
            Issue.record("the VM did not end in time")
        }
        try failure.get()
        return try #require(result.withLock { $0 }).get()
    }

    /// Polls `condition` every millisecond for at most `seconds`.
    static func wait(seconds: Double = 60, until condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while !condition() {
            if ContinuousClock.now > deadline { return false }
            usleep(1000)
        }
        return true
    }

    static func firmware(_ name: String, mode: String, onReboot: LifecycleAction = .destroy) -> VMConfiguration {
        VMConfiguration(
            boot: .firmware(FirmwareBootSource(path: "\(Firmware.directory)/\(name).bin", mode: mode)), onReboot: onReboot)
    }

    static func powerGuest(_ action: String, onPowerOff: LifecycleAction = .destroy) -> VMConfiguration {
        VMConfiguration(
            boot: .linux(LinuxBootSource(kernel: PowerGuestTests.guestPath, commandLine: "console=ttyS0 action=\(action)")),
            memoryBytes: 64 << 20, onPowerOff: onPowerOff)
    }

    @Test func aResetWithRestartBootsAgainKeepingRAM() throws {
        let output = CollectedOutput()
        let instance = try VMInstance(Self.firmware("reset-once", mode: "protected", onReboot: .restart), policy: RunPolicy(timeLimit: .seconds(60))) {
            output.append($0)
        }
        let report = try Self.running(instance)
        #expect(report.outcome == .exited(status: 0))
        #expect(report.boots == 2)
        #expect(instance.bootCount == 2)
        #expect(String(decoding: output.bytes, as: UTF8.self) == "first boot\nsecond boot\n")
    }

    @Test func aResetWithDestroyEndsTheVM() throws {
        let output = CollectedOutput()
        let instance = try VMInstance(Self.firmware("reset-once", mode: "protected"), policy: RunPolicy(timeLimit: .seconds(60))) {
            output.append($0)
        }
        let report = try Self.running(instance)
        #expect(report.outcome == .shutdown)
        #expect(report.boots == 1)
        #expect(String(decoding: output.bytes, as: UTF8.self) == "first boot\n")
    }

    @Test func aHardResetBootsAgainWhateverOnRebootSays() throws {
        let output = CollectedOutput()
        let instance = try VMInstance(Self.firmware("counter-user", mode: "user"), policy: RunPolicy(timeLimit: .seconds(60))) {
            output.append($0)
        }
        // The second boot counts from 0 again (the reset may cut a line: "5" then "0" reads "50").
        let restarted = { (lines: [Substring]) in zip(lines.dropFirst(), lines.dropFirst(2)).contains { $0.hasSuffix("0") && $1 == "1" } }
        let lines = { String(decoding: output.bytes, as: UTF8.self).split(separator: "\n") }
        let report = try Self.running(instance) { instance in
            #expect(Self.wait { output.lineCount >= 5 })
            try instance.reset()
            // Until the second boot has printed (the first may print on for a moment after the request).
            #expect(Self.wait { instance.bootCount == 2 && restarted(lines()) })
            instance.stop()
        }
        #expect(report.outcome == .stopped)
        #expect(report.boots == 2)
        #expect(lines().first == "0")
        #expect(restarted(lines()), "\(lines())")
    }

    @Test func aVMStartedPausedRunsOnlyAfterResume() throws {
        let output = CollectedOutput()
        let instance = try VMInstance(Self.firmware("counter-user", mode: "user"), policy: RunPolicy(timeLimit: .seconds(60))) {
            output.append($0)
        }
        #expect(instance.runState == .notStarted)
        let report = try Self.running(instance, paused: true) { instance in
            #expect(Self.wait { instance.machine != nil && instance.runState == .paused })
            usleep(300_000)
            #expect(output.bytes.isEmpty, "a paused VM printed")
            try instance.resume()
            #expect(instance.runState == .running)
            #expect(Self.wait { output.lineCount >= 3 })
            try instance.pause()
            #expect(instance.runState == .paused)
            try instance.resume()
            instance.stop(.killed)
        }
        #expect(report.outcome == .killed)
        #expect(instance.runState == .finished)
    }

    @Test func requestsThatDoNotApplyAreRefused() throws {
        let instance = try VMInstance(Self.firmware("counter-user", mode: "user"), policy: RunPolicy(timeLimit: .seconds(60))) { _ in }
        #expect(throws: VMInstance.RequestError.self) { try instance.pause() }
        _ = try Self.running(instance) { instance in
            #expect(Self.wait { instance.machine?.state == .running })
            // A firmware guest has no ACPI and no i8042.
            #expect(throws: VMInstance.RequestError.self) { try instance.pressPowerButton() }
            #expect(throws: VMInstance.RequestError.self) { try instance.sendCtrlAltDelete() }
            #expect(throws: VMInstance.RequestError.self) { try instance.resume() }
            instance.stop()
        }
        #expect(throws: VMInstance.RequestError.self) { try instance.resume() }
    }

    @Test func aStopBeforeTheFirstBootEndsAtOnce() throws {
        let instance = try VMInstance(Self.firmware("counter-user", mode: "user")) { _ in }
        instance.stop()
        let report = try instance.run()
        #expect(report.outcome == .stopped)
        #expect(report.boots == 0)
    }

    @Test(.timeLimit(.minutes(45)))
    func thePowerButtonEndsAGuestThatTakesItsSCI() throws {
        let output = CollectedOutput()
        let instance = try VMInstance(Self.powerGuest("button"), policy: RunPolicy(timeLimit: .seconds(120))) { output.append($0) }
        let report = try Self.running(instance) { instance in
            #expect(Self.wait(seconds: 100) { String(decoding: output.bytes, as: UTF8.self).contains("POWER waiting for the power button") })
            #expect(instance.linuxGuest?.powerEvents?.isPowerButtonEnabled == true)
            usleep(100_000)
            #expect(!String(decoding: output.bytes, as: UTF8.self).contains("POWER button pressed"), "no press, no SCI")
            try instance.pressPowerButton()
        }
        let text = String(decoding: output.bytes, as: UTF8.self)
        #expect(report.outcome == .poweredOff, "\(text)")
        #expect(text.contains("POWER sci 0x1\nPOWER button pressed\n"), "\(text)")
    }

    @Test(.timeLimit(.minutes(45)))
    func aPressBeforeTheGuestListensIsHeldAndAPreservedVMStaysUntilStopped() throws {
        let output = CollectedOutput()
        let instance = try VMInstance(Self.powerGuest("button", onPowerOff: .preserve), policy: RunPolicy(timeLimit: .seconds(120))) {
            output.append($0)
        }
        let report = try Self.running(instance) { instance in
            #expect(Self.wait { instance.linuxGuest != nil })
            // Before the guest enabled the event: held, delivered when it does.
            try instance.pressPowerButton()
            #expect(Self.wait(seconds: 100) { instance.phase == .preserved(.poweredOff) })
            #expect(instance.runState == .paused)
            #expect(throws: VMInstance.RequestError.self) { try instance.resume() }
            instance.stop()
        }
        #expect(report.outcome == .poweredOff)
        #expect(String(decoding: output.bytes, as: UTF8.self).contains("POWER button pressed"))
    }
}
