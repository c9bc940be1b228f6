import Coordinator
import Foundation
import Worker
import XCTest

/// Tearing down ZeroMQ never hangs. libzmq's socket monitor sends its events with a blocking send
/// from the I/O thread: an event raised after the monitor's reading socket was closed, while the
/// watched socket still lives (a closed socket lingers to deliver what it queued), stalls that
/// thread for good, and `zmq_ctx_term` then waits forever. CI once lost a whole run to it.
final class ZMQShutdownTests: XCTestCase {
    /// A worker whose handshakes keep failing (its "scheduler" is a PUSH socket, an incompatible
    /// type) is asked to leave with a BYE it cannot deliver, so its socket lingers and reconnects,
    /// raising CONNECTED / handshake-failed / DISCONNECTED events after its loop ended. The whole
    /// context must still terminate.
    func testAWorkerThatLeavesMidHandshakeLetsItsContextTerminate() throws {
        let finished = DispatchSemaphore(value: 0)
        let failure = LogCapture()
        let thread = Thread {
            do {
                try Self.runWorkerAgainstAnIncompatiblePeer()
            } catch {
                failure.append("\(error)")
            }
            // Everything created above has been released here, the context last: zmq_ctx_term returned.
            finished.signal()
        }
        thread.start()
        XCTAssertEqual(finished.wait(timeout: .now() + 30), .success,
                       "the ZeroMQ context did not terminate within 30 s: an I/O thread is stuck on a monitor event")
        XCTAssertEqual(failure.all, [])
    }

    /// A client whose connection failed its handshake before it sent anything: its requests time
    /// out (as documented) and `close()` returns, instead of its I/O thread blocking in a send.
    func testAClientWithAFailedHandshakeTimesOutAndCloses() throws {
        let finished = DispatchSemaphore(value: 0)
        let outcome = LogCapture()
        let thread = Thread {
            do {
                let context = try ZMQContext()
                let peer = try ZMQSocket(context: context, kind: .push)
                let client = try SchedulerClient(endpoint: try peer.bind("tcp://127.0.0.1:*"), context: context)
                Thread.sleep(forTimeInterval: 0.5)  // the handshake has failed by now
                do {
                    _ = try client.status(timeout: 0.3)
                    outcome.append("a STATUS reply from a PUSH socket")
                } catch SchedulerClientError.timedOut {
                    outcome.append("timed out")
                }
                client.close()
                peer.close()
            } catch {
                outcome.append("\(error)")
            }
            finished.signal()
        }
        thread.start()
        XCTAssertEqual(finished.wait(timeout: .now() + 30), .success, "the client did not close within 30 s")
        XCTAssertEqual(outcome.all, ["timed out"])
    }

    private static func runWorkerAgainstAnIncompatiblePeer() throws {
        let context = try ZMQContext()
        let peer = try ZMQSocket(context: context, kind: .push)
        let endpoint = try peer.bind("tcp://127.0.0.1:*")
        let logs = LogCapture()
        var settings = InferenceWorkerConfiguration(scheduler: endpoint, name: "mismatched")
        settings.heartbeatInterval = 0.05
        let worker = try InferenceWorkerClient(configuration: settings, executor: NullImageExecutor(), context: context,
                                               log: { logs.append($0) })
        let done = DispatchSemaphore(value: 0)
        let loop = Thread { try? worker.run(); done.signal() }
        loop.start()
        // Several failed handshakes (libzmq retries every 100 ms), so events are flowing when it stops.
        Thread.sleep(forTimeInterval: 0.5)
        worker.requestStop()
        guard done.wait(timeout: .now() + 10) == .success else {
            throw RawHTTP.Failure(description: "the worker's loop did not return:\n\(logs.all.joined(separator: "\n"))")
        }
        // Reconnection attempts of the lingering socket fall after the loop has ended.
        Thread.sleep(forTimeInterval: 0.4)
        peer.close()
    }
}
