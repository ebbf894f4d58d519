using ReTok.Jobs.Kinds.TrainGenerator;

namespace ReTok.Tests.Kinds.TrainGenerator;

public class TrainGeneratorParamsTests
{
    [Fact]
    public void ScaleParamsAreValidatedByName()
    {
        Assert.Empty(new TrainGeneratorParams { GlobalBatchSize = 256, GradAccumSteps = 8, CheckpointEvery = 1000, MilestoneEvery = 5000, Ema = true }.Validate());
        Assert.Contains(new TrainGeneratorParams { GlobalBatchSize = 256, GradAccumSteps = 3 }.Validate(), e => e.StartsWith("grad_accum_steps: 3 does not divide"));
        Assert.Contains(new TrainGeneratorParams { GradAccumSteps = 0 }.Validate(), e => e.StartsWith("grad_accum_steps: must be >= 1"));
        Assert.Contains(new TrainGeneratorParams { CheckpointEvery = 1000, MilestoneEvery = 1500 }.Validate(), e => e.StartsWith("milestone_every: 1500 is not a multiple"));
        Assert.Contains(new TrainGeneratorParams { KeepMilestones = -1 }.Validate(), e => e.StartsWith("keep_milestones:"));
        Assert.Contains(new TrainGeneratorParams { EmaDecay = 1.5 }.Validate(), e => e.StartsWith("ema_decay:"));
    }
}
