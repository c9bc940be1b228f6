import Collective
import Foundation

/// Why a rank grid cannot be built.
public enum TopologyError: Error, CustomStringConvertible, Equatable {
    /// dp × pp does not equal the number of ranks (or pp does not divide it).
    case doesNotDivideWorld(worldSize: Int, dataParallel: Int?, pipelineStages: Int)
    /// More pipeline stages than the model has layers.
    case moreStagesThanLayers(stages: Int, layers: Int)
    /// A count below one.
    case invalid(name: String, value: Int)

    public var description: String {
        switch self {
        case let .doesNotDivideWorld(world, dp, pp):
            if let dp {
                return "topology dp=\(dp) × pp=\(pp) = \(dp * pp) ranks does not match the \(world) ranks "
                    + "started (run with mpirun -np \(dp * pp), or choose dp × pp = \(world))"
            }
            return "\(pp) pipeline stages do not divide the \(world) ranks started "
                + "(the world size must be a multiple of pp)"
        case let .moreStagesThanLayers(stages, layers):
            return "topology asks for \(stages) pipeline stages but the model has only \(layers) "
                + "layer\(layers == 1 ? "" : "s") to split (use pp ≤ \(layers))"
        case let .invalid(name, value):
            return "topology \(name) = \(value) must be at least 1"
        }
    }
}

/// The rank grid world = dp × pp. A pipeline replica occupies consecutive ranks:
/// rank = dpRank·pp + ppRank, so stage s of replica d is rank d·pp + s (stages of one replica
/// talk to each other most, and consecutive ranks usually share a host).
public struct TrainingTopology: Equatable, Sendable {
    public let dataParallel: Int
    public let pipelineStages: Int
    public var worldSize: Int { dataParallel * pipelineStages }

    /// - Parameters:
    ///   - worldSize: the number of ranks started.
    ///   - dataParallel: replicas; nil means worldSize / pipelineStages.
    ///   - pipelineStages: stages per replica.
    ///   - layers: layers the model can be split into, when known (checked against pp).
    /// - Throws: `TopologyError` naming the mismatch.
    public init(worldSize: Int, dataParallel: Int? = nil, pipelineStages: Int = 1, layers: Int? = nil) throws {
        guard worldSize >= 1 else { throw TopologyError.invalid(name: "world size", value: worldSize) }
        guard pipelineStages >= 1 else { throw TopologyError.invalid(name: "pp", value: pipelineStages) }
        if let dataParallel, dataParallel < 1 { throw TopologyError.invalid(name: "dp", value: dataParallel) }
        if let layers, pipelineStages > layers {
            throw TopologyError.moreStagesThanLayers(stages: pipelineStages, layers: layers)
        }
        let dp = dataParallel ?? worldSize / pipelineStages
        guard dp >= 1, dp * pipelineStages == worldSize else {
            throw TopologyError.doesNotDivideWorld(worldSize: worldSize, dataParallel: dataParallel,
                                                   pipelineStages: pipelineStages)
        }
        self.dataParallel = dp
        self.pipelineStages = pipelineStages
    }

    /// (replica index, stage index) of world rank `rank`.
    public func coordinates(of rank: Int) -> (dpRank: Int, ppRank: Int) {
        (rank / pipelineStages, rank % pipelineStages)
    }

    /// World rank of stage `ppRank` of replica `dpRank`.
    public func rank(dpRank: Int, ppRank: Int) -> Int {
        dpRank * pipelineStages + ppRank
    }

    /// World ranks of one data-parallel group (the same stage in every replica).
    public func dataParallelGroup(ppRank: Int) -> [Int] {
        (0 ..< dataParallel).map { rank(dpRank: $0, ppRank: ppRank) }
    }

    /// World ranks of one pipeline (the stages of one replica).
    public func pipelineGroup(dpRank: Int) -> [Int] {
        (0 ..< pipelineStages).map { rank(dpRank: dpRank, ppRank: $0) }
    }
}

/// This rank's place in the grid and its two sub-communicators.
public final class TopologyGroups {
    public let topology: TrainingTopology
    public let world: Communicator
    /// The same stage of every replica; rank within it = dpRank. Gradients are averaged here.
    public let dataParallel: Communicator
    /// The stages of this rank's replica; rank within it = ppRank. Activations flow here.
    public let pipeline: Communicator
    public var dpRank: Int { dataParallel.rank }
    public var ppRank: Int { pipeline.rank }

    /// Splits `world` by `topology`. Collective over the world.
    /// - Throws: `TopologyError.doesNotDivideWorld` when the topology is not for this world's
    ///   size, or the communicator's error.
    public init(world: Communicator, topology: TrainingTopology) throws {
        guard topology.worldSize == world.size else {
            throw TopologyError.doesNotDivideWorld(worldSize: world.size, dataParallel: topology.dataParallel,
                                                   pipelineStages: topology.pipelineStages)
        }
        let (dpRank, ppRank) = topology.coordinates(of: world.rank)
        self.topology = topology
        self.world = world
        dataParallel = try world.split(color: ppRank, key: dpRank)
        pipeline = try world.split(color: dpRank, key: ppRank)
    }
}
