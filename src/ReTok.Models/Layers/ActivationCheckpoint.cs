using TorchSharp;
using static TorchSharp.torch;

namespace ReTok.Models.Layers;

/// <summary>
/// torch.utils.checkpoint for one function y = f(x) of a module (TorchSharp 0.107 has none): the forward runs f without
/// building a graph and keeps only x; backward re-runs f with grad on a detached copy of x and back-propagates the
/// incoming gradient through that fresh graph, so activation memory is one block's graph at a time instead of all of
/// them. The parameters are inputs of the autograd node (so it runs whenever they train); their gradients are added to
/// .grad inside the backward, the same sum AccumulateGrad forms in the plain graph.
/// Dropout replays the same masks: the CPU default generator's state is saved at forward and restored around the
/// recompute; on CUDA (TorchSharp cannot read the CUDA generator state) the block's CUDA stream is reseeded from a
/// seed drawn on the CPU generator, at forward and again at recompute.
/// </summary>
public static class ActivationCheckpoint
{
    public static Tensor Apply(Func<Tensor, Tensor> f, Tensor x, IReadOnlyList<Tensor> parameters)
    {
        var args = new object[2 + parameters.Count];
        args[0] = x;
        args[1] = f;
        for (int i = 0; i < parameters.Count; i++) args[2 + i] = parameters[i];
        return Recompute.apply(args);
    }

    private sealed class Recompute : autograd.SingleTensorFunction<Recompute>
    {
        public override string Name => "ActivationCheckpoint";

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var f = (Func<Tensor, Tensor>)vars[1];
            ctx.save_for_backward(new List<Tensor> { x });
            ctx.save_data("f", f);
            ctx.save_data("params", vars.Skip(2).Cast<Tensor>().ToArray());
            ctx.save_data("rng", new[] { get_rng_state().DetachFromDisposeScope() }); // an array: save_data warns on a bare Tensor
            if (x.device.type == DeviceType.CUDA)
            {
                long seed = randint(long.MaxValue, new long[] { 1 }, dtype: int64).item<long>();
                ctx.save_data("cuda_seed", seed);
                cuda.manual_seed(seed);
            }
            // every TorchSharp intermediate holds its storage until disposed: free the block's activations here
            using var scope = NewDisposeScope();
            return f(x).MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            using var scope = NewDisposeScope(); // the recomputed graph and its intermediates die with this call
            var x = ctx.get_saved_variables()[0];
            var f = (Func<Tensor, Tensor>)ctx.get_data("f");
            var ps = (Tensor[])ctx.get_data("params");
            var saved = ((Tensor[])ctx.get_data("rng"))[0];
            var now = get_rng_state();
            set_rng_state(saved);
            if (ctx.get_data("cuda_seed") is long seed) cuda.manual_seed(seed);
            Tensor xr, y;
            try
            {
                using var _ = enable_grad();
                xr = x.detach().requires_grad_(true);
                y = f(xr);
            }
            finally
            {
                set_rng_state(now);
                saved.Dispose();
            }
            var trainable = ps.Where(p => p.requires_grad).ToList();
            var wrt = new List<Tensor> { xr };
            wrt.AddRange(trainable);
            var g = autograd.grad(new[] { y }, wrt, new[] { gradOutput }, allow_unused: true);
            // Accumulate the parameter gradients here (as AccumulateGrad would) rather than returning them: returned
            // tensors would have to outlive this scope, holding a second copy of every block's gradients until the step ends.
            using (no_grad())
                for (int i = 0; i < trainable.Count; i++)
                {
                    var gi = g[1 + i];
                    if (gi is null || gi.IsInvalid) continue;
                    var p = trainable[i];
                    if (p.grad is null) p.grad = gi.DetachFromDisposeScope();
                    else p.grad.add_(gi);
                }
            var result = new List<Tensor> { g[0].MoveToOuterDisposeScope(), null! };
            result.AddRange(ps.Select(_ => (Tensor)null!));
            return result;
        }
    }
}
