using ReTok.Tracking;

namespace ReTok.Tests.Tracking;

/// <summary>Issue 18.3: retok.metric_provenance through the <see cref="Tracker"/>: one record per (run, key), upserted, fenced; the protocol hash.</summary>
public sealed class MetricProvenanceTests(TestDatabase db) : IClassFixture<TestDatabase>
{
    static EvalProvenance Adm(long samples = 50000, long? seed = 0) => new()
    {
        Evaluator = "ADM evaluator (guided-diffusion evaluations/evaluator.py) port", EvaluatorVersion = "1",
        Weights = "pt_inception-2015-12-05-6726825d.pth", WeightsSha256 = new string('a', 64),
        Reference = "run:1/VIRTUAL_imagenet256_labeled.npz", ReferenceSha256 = new string('b', 64),
        Preprocess = "ADM centre crop 256, PIL bicubic", Samples = samples, Precision = "bf16", Seed = seed, K = 32,
    };

    [Fact]
    public void The_protocol_hash_covers_what_changes_the_number_and_not_the_seed_run_or_code()
    {
        var a = Adm();
        Assert.Equal(64, a.ProtocolHash().Length);
        Assert.Equal(a.ProtocolHash(), (a with { Seed = 7, CodeVersion = "abc123", K = 256 }).ProtocolHash());
        Assert.NotEqual(a.ProtocolHash(), Adm(samples: 10000).ProtocolHash());
        Assert.NotEqual(a.ProtocolHash(), (a with { ReferenceSha256 = new string('c', 64) }).ProtocolHash());
        Assert.NotEqual(a.ProtocolHash(), (a with { Preprocess = "resize 256, PIL bilinear" }).ProtocolHash());
        Assert.NotEqual(a.ProtocolHash(), (a with { Precision = "fp32" }).ProtocolHash());
        Assert.NotEqual(a.ProtocolHash(), (a with { EvaluatorVersion = "2" }).ProtocolHash());
        Assert.Equal(a, EvalProvenance.FromJson(a.ToJson()));
    }

    [Fact]
    public async Task Provenance_is_stored_once_per_run_and_key_replaced_on_rerecord_and_fenced()
    {
        await using var t = db.CreateTracker();
        var run = await t.Runs.InsertAsync(new Run { Kind = "sample-gfid-aggregate", Status = RunStatus.Running });
        await t.RecordProvenanceAsync(run.Id, ["gfid@k=32", "is@k=32", "gfid@k=32"], Adm(), new Fence(run.Id, run.LeaseGeneration));
        await t.RecordProvenanceAsync(run.Id, ["gfid@k=32"], Adm(samples: 10000), new Fence(run.Id, run.LeaseGeneration));   // a re-aggregation

        var rows = await t.GetProvenanceAsync([run.Id]);
        Assert.Equal(["gfid@k=32", "is@k=32"], rows.Select(r => r.Key));
        Assert.Equal(Adm(samples: 10000).ProtocolHash(), rows[0].ProtocolHash);
        Assert.Equal(Adm().ProtocolHash(), rows[1].ProtocolHash);
        Assert.Equal(10000, EvalProvenance.FromJson(rows[0].Provenance)!.Samples);
        Assert.Contains("\"reference_sha256\"", rows[1].Provenance);

        // an executor that lost the lease writes nothing
        await Assert.ThrowsAsync<LeaseLostException>(() => t.RecordProvenanceAsync(run.Id, ["sfid@k=32"], Adm(), new Fence(run.Id, run.LeaseGeneration + 1)));
        Assert.Equal(2, (await t.GetProvenanceAsync([run.Id])).Count);
    }
}
