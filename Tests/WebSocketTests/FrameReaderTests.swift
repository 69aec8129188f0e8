import Testing
import WebSocket

struct ReadCase: Sendable, CustomTestStringConvertible {
    var name: String
    var wire: [UInt8]
    var expected: [String]
    var role: FrameReader.Role = .server
    var testDescription: String { name }
}

private let ping = wireFrame(.ping, bytes("are you there"))
private let big16 = [UInt8](repeating: UInt8(ascii: "b"), count: 300)
private let big64 = [UInt8](repeating: UInt8(ascii: "c"), count: 70_000)

@Suite("FrameReader: bytes split anywhere in, events out")
struct FrameReaderTests {
    /// Each case is read whole, cut in two at every offset, and one byte at a time: all must agree.
    static let cases: [ReadCase] = [
        ReadCase(name: "a masked binary frame, 7-bit length", wire: wireFrame(.binary, bytes("hello")),
                 expected: ["start binary", "data hello", "end"]),
        ReadCase(name: "an unmasked server frame read by a client", wire: wireFrame(.text, bytes("hi"), mask: nil),
                 expected: ["start text", "data hi", "end"], role: .client),
        ReadCase(name: "16-bit length", wire: wireFrame(.binary, big16),
                 expected: ["start binary", "data " + String(repeating: "b", count: 300), "end"]),
        ReadCase(name: "an empty message", wire: wireFrame(.binary, []), expected: ["start binary", "end"]),
        ReadCase(name: "a message in three frames with a ping between them",
                 wire: wireFrame(.binary, bytes("one "), fin: false) + ping + wireFrame(.continuation, bytes("two "), fin: false)
                     + wireFrame(.continuation, [], fin: false) + wireFrame(.continuation, bytes("three")),
                 expected: ["start binary", "data one ", "ping are you there", "data two three", "end"]),
        ReadCase(name: "two messages back to back", wire: wireFrame(.binary, bytes("a")) + wireFrame(.text, bytes("b"), mask: 0),
                 expected: ["start binary", "data a", "end", "start text", "data b", "end"]),
        ReadCase(name: "pong, then close with a code and a reason; what follows is not read",
                 wire: wireFrame(.pong, bytes("x")) + wireFrame(.close, [0x03, 0xE8] + bytes("bye")) + wireFrame(.binary, bytes("late")),
                 expected: ["pong x", "close 1000 bye"]),
        ReadCase(name: "close without a code", wire: wireFrame(.close, []), expected: ["close - "]),
        ReadCase(name: "reserved bits: no extension was negotiated", wire: [0xC2, 0x80, 1, 2, 3, 4],
                 expected: ["failed 1002 a frame has reserved bits set, and no extension was negotiated"]),
        ReadCase(name: "an unknown opcode", wire: [0x83, 0x80, 1, 2, 3, 4], expected: ["failed 1002 unknown opcode 3"]),
        ReadCase(name: "a client frame without a mask", wire: wireFrame(.binary, bytes("x"), mask: nil),
                 expected: ["failed 1002 a client frame without a mask"]),
        ReadCase(name: "a server frame with a mask", wire: wireFrame(.binary, bytes("x")),
                 expected: ["failed 1002 a server frame with a mask"], role: .client),
        ReadCase(name: "a fragmented ping", wire: wireFrame(.ping, bytes("x"), fin: false),
                 expected: ["failed 1002 a control frame without FIN"]),
        ReadCase(name: "a ping of 126 bytes", wire: wireFrame(.ping, [UInt8](repeating: 0, count: 126)),
                 expected: ["failed 1002 a control frame of 126 bytes (at most 125)"]),
        ReadCase(name: "a continuation with no message", wire: wireFrame(.continuation, bytes("x")),
                 expected: ["failed 1002 a continuation frame with no message to continue"]),
        ReadCase(name: "a new message inside an unfinished one",
                 wire: wireFrame(.binary, bytes("x"), fin: false) + wireFrame(.binary, bytes("y")),
                 expected: ["start binary", "data x", "failed 1002 a new message before the last one ended"]),
        ReadCase(name: "a close of one byte", wire: wireFrame(.close, [3]), expected: ["failed 1002 a close frame with a malformed code"]),
        ReadCase(name: "a close with code 1005, which never travels", wire: wireFrame(.close, [0x03, 0xED]),
                 expected: ["failed 1002 a close frame with a malformed code"]),
        ReadCase(name: "a close whose reason is not UTF-8", wire: wireFrame(.close, [0x03, 0xE8, 0xFF]),
                 expected: ["failed 1002 a close frame with a malformed code"]),
        ReadCase(name: "a 64-bit length with its top bit set", wire: [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                 expected: ["failed 1002 a frame length with its top bit set"]),
    ]

    @Test(arguments: cases)
    func everySplit(_ testCase: ReadCase) {
        for cuts in allCuts(testCase.wire.count) {
            let events = read(testCase.wire, cuts: cuts, role: testCase.role)
            #expect(events == testCase.expected, "cut at \(cuts.count == 1 ? "\(cuts[0])" : "every byte")")
            if events != testCase.expected { return }
        }
    }

    @Test("a 64-bit length, masked and not, in arbitrary pieces")
    func longFrame() {
        let expected = ["start binary", "data " + String(repeating: "c", count: big64.count), "end"]
        for (mask, role) in [(UInt32(0xA1B2_C3D4), FrameReader.Role.server), (nil, .client)] {
            let wire = wireFrame(.binary, big64, mask: mask)
            #expect(Array(wire[..<2]) == [0x82, (mask == nil ? 0 : 0x80) | 127])
            for cuts in [[1], [9], [13], [14], [15], [14 + 7], Array(stride(from: 0, to: wire.count, by: 4093))] {
                #expect(read(wire, cuts: cuts, role: role) == expected, "cuts \(cuts.prefix(3))")
            }
        }
    }

    @Test("the mask's phase carries over pieces of every size")
    func maskPhase() {
        let plain = (0..<67).map { UInt8($0) }
        for pieceSize in 1...17 {
            var data = plain
            var mask = Mask(key: 0x0102_0304)
            var offset = 0
            data.withUnsafeMutableBytes { buffer in
                while offset < buffer.count {
                    let end = min(offset + pieceSize, buffer.count)
                    mask.apply(UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<end]))
                    offset = end
                }
            }
            #expect(data == plain.enumerated().map { $0.element ^ UInt8(1 + $0.offset % 4) })
        }
    }

    @Test("a frame past the limit is refused at its header, before any of its payload")
    func oversizedFrame() {
        let limits = WebSocketLimits(maxMessageBytes: 100)
        var reader = FrameReader(role: .server, limits: limits)
        var events: [FrameEvent] = []
        var header = FrameHeader(opcode: .binary, mask: 1, payloadLength: 101).encoded()
        header.withUnsafeMutableBytes { reader.receive($0, into: &events) }
        #expect(events == [.failed(.messageTooBig(limit: 100))])
        #expect(events.first?.answer == FrameWriter.close(code: 1009))
        #expect(reader.isClosed)
        #expect(read(wireFrame(.binary, [UInt8](repeating: 1, count: 100)), cuts: [], limits: limits).count == 3)
    }

    @Test("a message past the limit is refused at the frame that would cross it")
    func oversizedMessage() {
        let limits = WebSocketLimits(maxMessageBytes: 10)
        let wire = wireFrame(.binary, bytes("123456"), fin: false) + wireFrame(.continuation, bytes("7890"), fin: false)
            + wireFrame(.continuation, bytes("x"))
        #expect(read(wire, cuts: [], limits: limits) == ["start binary", "data 1234567890", "failed 1009 a message larger than 10 bytes"])
        // Control frames between fragments do not count.
        let pinged = wireFrame(.binary, bytes("123456"), fin: false) + ping + wireFrame(.continuation, bytes("7890"))
        #expect(read(pinged, cuts: [], limits: limits).last == "end")
    }

    @Test("payloadRemaining tells how much of a frame's payload is still to come")
    func payloadRemaining() {
        var reader = FrameReader(role: .client)
        var events: [FrameEvent] = []
        var wire = FrameWriter.header(.binary, payloadLength: 1000) + [UInt8](repeating: 7, count: 300)
        wire.withUnsafeMutableBytes { reader.receive($0, into: &events) }
        #expect(reader.payloadRemaining == 700)
        #expect(events == [.messageStart(.binary), .payload(4..<304)])
    }

    @Test("answers: pong with the ping's payload, close echoed, failures closed with their code")
    func answers() {
        #expect(FrameEvent.ping(bytes("p")).answer == [0x8A, 1, UInt8(ascii: "p")])
        #expect(FrameEvent.close(code: 1001, reason: "x").answer == [0x88, 2, 0x03, 0xE9])
        #expect(FrameEvent.close(code: nil, reason: "").answer == [0x88, 0])
        #expect(FrameEvent.failed(.reservedBits).answer == [0x88, 2, 0x03, 0xEA])
        #expect(FrameEvent.pong([]).answer == nil)
        #expect(FrameEvent.payload(0..<1).answer == nil)
    }
}

@Suite("FrameWriter: headers alone, so payloads go from the caller's buffer")
struct FrameWriterTests {
    @Test(arguments: [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (1 << 40, 10)])
    func headerLengths(_ length: Int, _ expected: Int) {
        #expect(FrameWriter.headerLength(payloadLength: length) == expected)
        let header = FrameWriter.header(.binary, payloadLength: length)
        #expect(header.count == expected)
        #expect(header[0] == 0x82)
        guard case .header(let decoded, let size) = header.withUnsafeBytes({ FrameHeader.decode($0) }) else {
            Issue.record("\(header) does not decode")
            return
        }
        #expect(size == expected && decoded.payloadLength == length && decoded.mask == nil && decoded.fin)
    }

    @Test("a fragmented message from the writer reads back whole")
    func fragments() {
        let wire = FrameWriter.header(.binary, fin: false, payloadLength: 3) + bytes("abc")
            + FrameWriter.header(.continuation, payloadLength: 2) + bytes("de")
        #expect(read(wire, cuts: [4], role: .client) == ["start binary", "data abcde", "end"])
    }

    @Test("a close reason is cut to fit a control frame, at a character boundary")
    func closeReason() {
        let frame = FrameWriter.close(code: 1000, reason: String(repeating: "é", count: 100))
        #expect(frame.count == 2 + 2 + 122)
        #expect(read(frame, cuts: [], role: .client).first?.hasPrefix("close 1000 éé") == true)
    }
}
