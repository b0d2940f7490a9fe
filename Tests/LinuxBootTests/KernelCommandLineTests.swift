import LinuxBoot
import Testing

@Suite struct KernelCommandLineTests {
    @Test func wordsAndPairsAreJoinedWithSingleSpaces() throws {
        var line = KernelCommandLine(maximumLength: 100)
        try line.append("console=ttyS0")
        try line.append("  quiet   panic=-1 ")
        try line.append(key: "root", value: "/dev/vda")
        try line.append("")
        #expect(line.description == "console=ttyS0 quiet   panic=-1 root=/dev/vda")
        #expect(line.nulTerminatedBytes == Array("console=ttyS0 quiet   panic=-1 root=/dev/vda".utf8) + [0])
        #expect(line.count == 44)
    }

    @Test func valuesWithSpacesAreQuoted() throws {
        var line = KernelCommandLine(maximumLength: 100)
        try line.append(key: "init.args", value: "a b")
        #expect(line.description == "init.args=\"a b\"")
    }

    @Test(arguments: ["", "a b", "a=b", "a\"b", "a\tb"])
    func badKeysAreRejected(key: String) {
        var line = KernelCommandLine(maximumLength: 100)
        #expect(linuxBootError { try line.append(key: key, value: "1") } == .commandLineInvalidKey(key: key))
        #expect(line.isEmpty)
    }

    @Test func valuesWithQuotesAreRejected() {
        var line = KernelCommandLine(maximumLength: 100)
        #expect(linuxBootError { try line.append(key: "x", value: "say \"hi\"") } == .commandLineInvalidValue(key: "x", value: "say \"hi\""))
    }

    @Test func nulBytesAreRejected() throws {
        var line = try KernelCommandLine("console=ttyS0", maximumLength: 100)
        let error = linuxBootError { try line.append("quiet\0init=/bin/sh") }
        #expect(error == .commandLineContainsNUL(fragment: "quiet\0init=/bin/sh"))
        #expect(error?.description.contains("\\x0") == true)
        #expect(linuxBootError { try line.append(key: "init", value: "/bin/sh\0") } == .commandLineContainsNUL(fragment: "init=/bin/sh\0"))
        #expect(linuxBootError { try line.append(key: "in\0it", value: "x") } == .commandLineContainsNUL(fragment: "in\0it=x"))
        #expect(line.description == "console=ttyS0")
    }

    @Test func exactlyAtTheLimitIsAcceptedAndOneOverIsNot() throws {
        var line = KernelCommandLine(maximumLength: 20)
        try line.append("0123456789")
        try line.append("abcdefghi")  // 10 + 1 + 9 = 20
        #expect(line.count == 20)
        #expect(line.nulTerminatedBytes.count == 21)

        var over = KernelCommandLine(maximumLength: 20)
        try over.append("0123456789")
        let error = linuxBootError { try over.append("abcdefghij") }  // 21
        #expect(error == .commandLineTooLong(length: 21, maximum: 20))
        #expect(error?.description == "kernel command line of 21 bytes is longer than the kernel's limit of 20 (cmdline_size): shorten it")
        #expect(over.description == "0123456789")
    }

    @Test func keyValueCountsTowardsTheLimit() {
        var line = KernelCommandLine(maximumLength: 5)
        #expect(linuxBootError { try line.append(key: "ab", value: "cde") } == .commandLineTooLong(length: 6, maximum: 5))
        #expect(linuxBootError { try line.append(key: "ab", value: "cd") } == nil)
    }

    @Test func theLimitComesFromCmdlineSize() throws {
        var fake = FakeKernel()
        fake.cmdlineSize = 255
        #expect(KernelCommandLine(for: try fake.parse()).maximumLength == 255)
        fake.cmdlineSize = 0xFFFF_FFFF  // more than the loader's area holds
        #expect(KernelCommandLine(for: try fake.parse()).maximumLength == LinuxBootLayout.commandLineCapacity - 1)
    }

    @Test func lengthIsCountedInBytes() throws {
        var line = KernelCommandLine(maximumLength: 4)
        try line.append("é")  // two bytes in UTF-8
        #expect(line.count == 2)
        #expect(linuxBootError { try line.append("é") } == .commandLineTooLong(length: 5, maximum: 4))
    }

    @Test func aNegativeLimitAcceptsOnlyTheEmptyLine() throws {
        var line = KernelCommandLine(maximumLength: -3)
        #expect(line.maximumLength == 0)
        try line.append("   ")
        #expect(linuxBootError { try line.append("a") } == .commandLineTooLong(length: 1, maximum: 0))
    }
}
