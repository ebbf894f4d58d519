using YamlDotNet.RepresentationModel;

namespace ReTok.Tests.Deploy;

/// <summary>
/// Checks of docker/ and infra/k8s/ (no Docker engine or kubeconform on these machines): the manifests are read
/// strictly into the Kubernetes API models of the official C# client (unknown or mistyped fields fail), plus our
/// structural rules: required fields, pinned images, non-root users, resource limits, GPU requests.
/// </summary>
public class DeploymentLintTests
{
    static readonly string Root = RepoPaths.Root;

    static IEnumerable<(string File, YamlMappingNode Doc)> K8sDocs()
    {
        foreach (var f in Directory.GetFiles(Path.Combine(Root, "infra", "k8s"), "*.yaml").Order())
        {
            var ys = new YamlStream();
            ys.Load(new StringReader(File.ReadAllText(f)));
            foreach (var d in ys.Documents) yield return (Path.GetFileName(f), (YamlMappingNode)d.RootNode);
        }
    }

    static YamlNode? At(YamlNode n, params string[] path)
    {
        foreach (var p in path)
        {
            if (n is not YamlMappingNode m || !m.Children.TryGetValue(new YamlScalarNode(p), out var next)) return null;
            n = next;
        }
        return n;
    }

    /// <summary>Schema check: every manifest deserialises strictly into the typed Kubernetes models (KubernetesClient).</summary>
    [Fact]
    public void K8sManifestsMatchTheKubernetesApiSchema()
    {
        int count = 0;
        foreach (var f in Directory.GetFiles(Path.Combine(Root, "infra", "k8s"), "*.yaml").Order())
        {
            List<object> objs;
            try { objs = k8s.KubernetesYaml.LoadAllFromString(File.ReadAllText(f), strict: true); }
            catch (Exception e) { throw new Xunit.Sdk.XunitException($"{Path.GetFileName(f)}: not a valid Kubernetes manifest: {e.Message} {e.InnerException?.Message}"); }
            foreach (var o in objs)
            {
                Assert.IsAssignableFrom<k8s.IKubernetesObject<k8s.Models.V1ObjectMeta>>(o);
                count++;
            }
        }
        Assert.True(count >= 6, $"only {count} Kubernetes objects found");
    }

    /// <summary>A RETOK_* setting in a manifest or the compose file that no code reads is silently ignored: fail instead.</summary>
    [Fact]
    public void EveryRetokSettingInDeploymentFilesIsReadByTheCode()
    {
        var code = string.Join("\n", Directory.GetFiles(Path.Combine(Root, "src"), "*.cs", SearchOption.AllDirectories).Select(File.ReadAllText));
        var engine = File.ReadAllText(Path.Combine(Root, "src", "ReTok.Engine", "EngineOptions.cs"));
        var files = Directory.GetFiles(Path.Combine(Root, "infra", "k8s"), "*.yaml").Append(Path.Combine(Root, "docker", "compose.yaml"));
        var keys = files.SelectMany(f => System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(f), @"^\s*(RETOK_[A-Z0-9_]+)\s*:", System.Text.RegularExpressions.RegexOptions.Multiline)
            .Select(m => (File: Path.GetFileName(f), Key: m.Groups[1].Value))).ToList();
        Assert.NotEmpty(keys);
        foreach (var (file, key) in keys)
        {
            bool read = key.StartsWith("RETOK_ENGINE_") ? engine.Contains($"\"{key["RETOK_ENGINE_".Length..]}\"") : code.Contains($"\"{key}\"");
            Assert.True(read, $"{file}: {key} is not read by any code (misspelled? engine settings are RETOK_ENGINE_POLL_MS, _INVISIBILITY_S, ...)");
        }
    }

    /// <summary>Dockerfiles too, comments included: a comment naming a setting that does not exist misleads operators.</summary>
    [Fact]
    public void EveryRetokSettingNamedInADockerfileIsReadByTheCode()
    {
        var code = string.Join("\n", Directory.GetFiles(Path.Combine(Root, "src"), "*.cs", SearchOption.AllDirectories).Select(File.ReadAllText));
        var engine = File.ReadAllText(Path.Combine(Root, "src", "ReTok.Engine", "EngineOptions.cs"));
        var found = 0;
        foreach (var f in Directory.GetFiles(Path.Combine(Root, "docker"), "*.Dockerfile"))
            foreach (var key in System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(f), @"\bRETOK_[A-Z0-9_]+").Select(m => m.Value).Distinct())
            {
                found++;
                bool read = key.StartsWith("RETOK_ENGINE_") ? engine.Contains($"\"{key["RETOK_ENGINE_".Length..]}\"") : code.Contains($"\"{key}\"");
                Assert.True(read, $"{Path.GetFileName(f)}: {key} is not read by any code");
            }
        Assert.True(found >= 3, "no RETOK_* settings found in docker/*.Dockerfile");
    }

    [Fact]
    public void StrictSchemaCheckRejectsAMisspelledField()
    {
        const string bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n";
        Assert.ThrowsAny<Exception>(() => k8s.KubernetesYaml.LoadAllFromString(bad, strict: true));
        Assert.Single(k8s.KubernetesYaml.LoadAllFromString(bad.Replace("replica:", "replicas:"), strict: true));
    }

    [Fact]
    public void K8sManifestsHaveRequiredFieldsPinnedImagesAndLimits()
    {
        var docs = K8sDocs().ToList();
        Assert.NotEmpty(docs);
        var kinds = new HashSet<string>();
        foreach (var (file, doc) in docs)
        {
            var kind = At(doc, "kind")?.ToString();
            Assert.False(string.IsNullOrEmpty(At(doc, "apiVersion")?.ToString()), $"{file}: apiVersion missing");
            Assert.False(string.IsNullOrEmpty(kind), $"{file}: kind missing");
            Assert.False(string.IsNullOrEmpty(At(doc, "metadata", "name")?.ToString()), $"{file}: metadata.name missing");
            kinds.Add(kind!);
            if (kind != "Namespace") Assert.Equal("retok", At(doc, "metadata", "namespace")?.ToString());
            var pod = kind is "Deployment" or "DaemonSet" or "Job" ? At(doc, "spec", "template", "spec") : null;
            if (pod == null) continue;
            if (kind != "Job")
            {
                var sel = At(doc, "spec", "selector", "matchLabels") as YamlMappingNode;
                var labels = At(doc, "spec", "template", "metadata", "labels") as YamlMappingNode;
                Assert.NotNull(sel);
                foreach (var (k, v) in sel!.Children) Assert.Equal(v.ToString(), labels?.Children[k].ToString());
            }
            foreach (YamlMappingNode c in (YamlSequenceNode)At(pod, "containers")!)
            {
                var image = At(c, "image")!.ToString();
                Assert.Matches(@"^[\w./-]+:[\w.-]+$", image);
                Assert.DoesNotContain(":latest", image);
                Assert.NotNull(At(c, "resources", "limits", "memory"));
            }
        }
        Assert.Contains("DaemonSet", kinds);
        var gpu = docs.Single(d => At(d.Doc, "metadata", "name")?.ToString() == "retok-worker-gpu").Doc;
        Assert.NotNull(At(gpu, "spec", "template", "spec", "nodeSelector"));
        var gpuContainer = (YamlMappingNode)((YamlSequenceNode)At(gpu, "spec", "template", "spec", "containers")!).Children[0];
        Assert.NotNull(At(gpuContainer, "resources", "limits", "nvidia.com/gpu"));
    }

    [Fact]
    public void DockerfilesArePinnedAndDropRoot()
    {
        var files = Directory.GetFiles(Path.Combine(Root, "docker"), "*.Dockerfile");
        Assert.True(files.Length >= 3);
        foreach (var f in files)
        {
            var lines = File.ReadAllLines(f);
            foreach (var from in lines.Where(l => l.StartsWith("FROM ")))
                Assert.Matches(@"^FROM [\w./-]+:[\w.-]*\d[\w.-]*( AS \w+)?$", from);
            Assert.Contains(lines, l => l.StartsWith("USER ") && !l.Contains("root"));
            Assert.Contains(lines, l => l.StartsWith("ENTRYPOINT [\"dotnet\", \"retok.dll\""));
        }
        Assert.Contains("-p:TorchBackend=cuda", File.ReadAllText(Path.Combine(Root, "docker", "worker-gpu.Dockerfile")));
    }

    [Fact]
    public void ComposeServicesPinImagesAndShareOneEnvironment()
    {
        var ys = new YamlStream();
        ys.Load(new StringReader(File.ReadAllText(Path.Combine(Root, "docker", "compose.yaml"))));
        var services = (YamlMappingNode)At(ys.Documents[0].RootNode, "services")!;
        foreach (var (name, svc) in services.Children)
        {
            var image = At(svc, "image")?.ToString();
            var build = At(svc, "build");
            Assert.True(image != null || build != null, $"service {name}: neither image nor build");
            if (image != null) Assert.Matches(@":[\w.-]*\d", image);
            if (build != null) Assert.True(File.Exists(Path.Combine(Root, "docker", "..", At(build, "dockerfile")!.ToString())), $"service {name}: dockerfile missing");
        }
        Assert.Contains(services.Children.Keys, k => k.ToString() == "postgres");
        Assert.Contains(services.Children.Keys, k => k.ToString() == "azurite");
    }
}
