import Foundation
import SuraTestSupport
import XCTest

/// Real processes under mpirun: `sura selftest collective` with 2, 3 and 4 ranks exercises every
/// collective over Open MPI, including the ring allreduce's byte count and bitwise agreement.
final class MPIProcessTests: XCTestCase {
    func testSelfTestUnderMPIRunWithTwoThreeAndFourRanks() throws {
        let sura = try BuiltProducts.executable("sura"), mpirun = try BuiltProducts.mpirun()
        for ranks in [2, 3, 4] {
            let run = try ChildProcess.run(mpirun, BuiltProducts.mpiFlags + ["-np", "\(ranks)", sura.path, "selftest", "collective"],
                                           mergingErrors: true, timeout: 120)
            XCTAssertEqual(run.status, 0, run.out)
            XCTAssertTrue(run.out.contains("collective selftest passed: \(ranks) ranks"), run.out)
        }
    }

    func testSelfTestWithoutMPIRunIsAWorldOfOne() throws {
        let sura = try BuiltProducts.executable("sura")
        let run = try ChildProcess.run(sura.path, ["selftest", "collective"], mergingErrors: true, timeout: 120)
        XCTAssertEqual(run.status, 0, run.out)
        XCTAssertTrue(run.out.contains("passed: 1 rank"), run.out)
    }
}
