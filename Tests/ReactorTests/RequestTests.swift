import Testing
@testable import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// `Request` sits in every slot of both backends' tables, and is copied on every issue.
@Suite struct RequestTests {
    /// Plain bits, stored inline: no reference counting, no box, no allocation when made or copied.
    @Test func isPlainDataOfAFewWords() {
        #expect(_isPOD(Request.self))
        #expect(MemoryLayout<Request>.size <= 32)
    }

    @Test func aSpliceWaitsOnItsSocketInItsDirection() {
        let fromSocket = Request.splice(from: 7, to: 9, count: 100, socket: 7)
        let toSocket = Request.splice(from: 9, to: 8, count: 100, socket: 8)
        #expect(fromSocket.descriptor == 7 && !fromSocket.writes)
        #expect(toSocket.descriptor == 8 && toSocket.writes)
        #expect(fromSocket.operation == .splice)
    }

    @Test func eachRequestReportsItsOperation() {
        let byte = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)
        let vector = UnsafeMutablePointer<iovec>.allocate(capacity: 1)
        defer { byte.deallocate(); vector.deallocate() }
        let requests: [(Request, Operation, Bool)] = [
            (.accept(3), .accept, false),
            (.connect(3, addressLength: 16), .connect, true),
            (.receive(3), .receive, false),
            (.read(3, into: byte, count: 1), .read, false),
            (.write(3, from: byte, count: 1), .write, true),
            (.writev(3, vectors: vector, count: 1), .writev, true),
            (.poll(3), .poll, false),
        ]
        for (request, operation, writes) in requests {
            #expect(request.operation == operation)
            #expect(request.descriptor == 3)
            #expect(request.writes == writes, "\(operation)")
        }
    }
}
