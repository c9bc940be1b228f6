import Coordinator
import Foundation
import XCTest

/// The scheduler's loop polls a `PollWakeTimer` beside its sockets so that a batch leaves at its
/// deadline, not at the next whole millisecond. The bounds below are generous on purpose: they
/// tell "the timer woke the poll" from "the poll's own timeout ran out", not how fast it was.
final class PollWakeTimerTests: XCTestCase {
    func testAnArmedTimerWakesThePollLongBeforeItsTimeout() throws {
        let timer = try PollWakeTimer()
        timer.arm(after: 0.0003)
        let start = Date()
        let readable = try ZMQSocket.pollReadable([], fds: [timer.fd], timeout: 5000)
        XCTAssertEqual(readable, [true])
        XCTAssertLessThan(Date().timeIntervalSince(start), 2.5, "the poll ran into its 5 s timeout: the timer never fired")
    }

    func testAcknowledgingAnExpiryMakesTheTimerQuietAgain() throws {
        let timer = try PollWakeTimer()
        timer.arm(after: 0.0001)
        XCTAssertEqual(try ZMQSocket.pollReadable([], fds: [timer.fd], timeout: 5000), [true])
        XCTAssertEqual(try ZMQSocket.pollReadable([], fds: [timer.fd], timeout: 0), [true], "an expiry stays readable until acknowledged")
        timer.acknowledge()
        XCTAssertEqual(try ZMQSocket.pollReadable([], fds: [timer.fd], timeout: 20), [false])
    }

    func testDisarmingAndRearmingReplaceTheEarlierSetting() throws {
        let timer = try PollWakeTimer()
        timer.arm(after: 0.005)
        timer.disarm()
        XCTAssertEqual(try ZMQSocket.pollReadable([], fds: [timer.fd], timeout: 50), [false], "a disarmed timer fired")

        timer.arm(after: 60)
        timer.arm(after: 0.001)
        let start = Date()
        XCTAssertEqual(try ZMQSocket.pollReadable([], fds: [timer.fd], timeout: 5000), [true])
        XCTAssertLessThan(Date().timeIntervalSince(start), 2.5, "re-arming did not replace the 60 s setting")
    }

    /// The sockets' flags come first, then the descriptors', each for its own item.
    func testSocketsAndDescriptorsReportSeparately() throws {
        try withConnectedPair { router, dealer in
            let timer = try PollWakeTimer()
            try dealer.send([Data("hello".utf8)])
            var readable = [false, false]
            for _ in 0..<100 where !readable[0] {
                readable = try ZMQSocket.pollReadable([router], fds: [timer.fd], timeout: 100)
            }
            XCTAssertEqual(readable, [true, false])
        }
    }

    /// `poll(_:wait:)`: a quiet socket returns after the wait with the expiry consumed, a socket
    /// with a message reports it, and no wait polls at once.
    func testPollWaitsForTheTimerOrASocket() throws {
        try withConnectedPair { router, dealer in
            let timer = try PollWakeTimer()
            XCTAssertEqual(try timer.poll([router], wait: 0.0005), [false])
            XCTAssertEqual(try ZMQSocket.pollReadable([], fds: [timer.fd], timeout: 0), [false], "the expiry was consumed")
            XCTAssertEqual(try timer.poll([router], wait: 0), [false])
            try dealer.send([Data("hello".utf8)])
            var readable = [false]
            for _ in 0..<100 where !readable[0] { readable = try timer.poll([router], wait: 0.1) }
            XCTAssertEqual(readable, [true])
        }
    }

    /// A ROUTER and a DEALER connected over loopback TCP (they keep their context alive), closed after `body`.
    private func withConnectedPair(_ body: (_ router: ZMQSocket, _ dealer: ZMQSocket) throws -> Void) throws {
        let context = try ZMQContext()
        let router = try ZMQSocket(context: context, kind: .router)
        let dealer = try ZMQSocket(context: context, kind: .dealer)
        defer {
            dealer.close()
            router.close()
        }
        try dealer.connect(try router.bind("tcp://127.0.0.1:*"))
        try body(router, dealer)
    }
}
