"""The Job creators contained: the admission policy on the Jobs the trainer and the sim-farm
create, its parameters against what those services build, and the namespace's quota.

The policy's CEL is not evaluated here (no CEL evaluator offline): its structure is checked
(who it binds, what it matches, which rules it has), `job_violations` states the same rules
in Python over its parameters, and the Jobs the services build with each build's settings
must pass them; planted violations show each rule refuses what it should.
"""

from __future__ import annotations

import copy

import pytest

from tests.k8s import kustomize
from tests.k8s import manifests as m

POLICY = "graspfleet-job-creators"
CREATORS = {"trainer": "graspfleet-trainer", "sim-farm": "graspfleet-sim-farm"}
# What each CEL validation must speak of, in the policy's order.
RULES = (
    "activeDeadlineSeconds",
    "image",
    "serviceAccountName",
    "volumes",
    "readOnly",
    "app.kubernetes.io/name",
)
QUOTA_RESOURCES = ("pods", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory")


def username(account: str) -> str:
    return f"system:serviceaccount:{kustomize.NAMESPACE}:{account}"


def job_creators(objects: list[dict]) -> set[str]:
    """The service accounts bound to a Role that may create Jobs."""
    roles = {
        r["metadata"]["name"]
        for r in m.of_kind(objects, "Role")
        for rule in r["rules"]
        if "batch" in rule["apiGroups"]
        and "jobs" in rule["resources"]
        and {"create", "*"} & set(rule["verbs"])
    }
    return {
        s["name"]
        for b in m.of_kind(objects, "RoleBinding")
        if b["roleRef"]["name"] in roles
        for s in b["subjects"]
    }


def params(objects: list[dict]) -> dict[str, dict[str, str | list[str]]]:
    """The policy's parameters by creator: image, service-account, ... (lists split)."""
    data = m.named(objects, "ConfigMap", POLICY)["data"]
    found: dict[str, dict] = {}
    for key, value in data.items():
        creator = next(c for c in CREATORS if key.startswith(f"{c}-"))
        what = key.removeprefix(f"{creator}-")
        many = what in ("components", "secrets", "claims", "read-only-claims")
        found.setdefault(creator, {})[what] = value.split(",") if many else value
    return found


def job_violations(job: dict, allowed: dict) -> list[str]:
    """The policy's rules in Python: what it would refuse in `job` (the read-only rule is
    read_only_violations')."""
    pod = job["spec"]["template"]["spec"]
    labels = job["spec"]["template"]["metadata"].get("labels", {})
    found = []
    if "activeDeadlineSeconds" not in job["spec"]:
        found.append("no activeDeadlineSeconds")
    if any(c["image"] != allowed["image"] for c in pod["containers"]) or "initContainers" in pod:
        found.append("another image")
    if pod.get("serviceAccountName") != allowed["service-account"] or pod.get(
        "automountServiceAccountToken", True
    ):
        found.append("another service account, or an API token")
    for volume in pod.get("volumes", []):
        source = {k: v for k, v in volume.items() if k != "name"}
        if not (
            "emptyDir" in source
            or source.get("secret", {}).get("secretName") in allowed["secrets"]
            or source.get("persistentVolumeClaim", {}).get("claimName") in allowed["claims"]
        ):
            found.append(f"volume {volume}")
    if (
        labels.get("app.kubernetes.io/name") != allowed["name"]
        or labels.get("app.kubernetes.io/component") not in allowed["components"]
        or "graspfleet.io/client" in labels
    ):
        found.append(f"labels {labels}")
    return found


def read_only_violations(job: dict, allowed: dict) -> list[str]:
    """The claims of `read-only-claims` a container of `job` may write."""
    pod = job["spec"]["template"]["spec"]
    found = []
    for volume in pod.get("volumes", []):
        claim = volume.get("persistentVolumeClaim", {})
        if claim.get("claimName") not in allowed["read-only-claims"] or claim.get("readOnly"):
            continue
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] == volume["name"] and not mount.get("readOnly"):
                    found.append(f"{container['name']} writes {claim['claimName']}")
    return found


def created_jobs(objects: list[dict]) -> list[tuple[str, dict]]:
    return [
        ("trainer", m.training_job(objects)),
        ("trainer", m.evaluation_job(objects)),
        ("sim-farm", m.shard_job(objects)),
    ]


def test_the_policy_binds_exactly_the_job_creators(built):
    """It matches the Jobs that the service accounts allowed to create them create, with a
    rule for each thing it pins, and denies when its parameters are missing."""
    for name, objects in [(c.name, o) for c, o in built.items()]:
        assert job_creators(objects) == set(CREATORS.values()), name
        policy = m.named(objects, "ValidatingAdmissionPolicy", POLICY)["spec"]
        assert policy["failurePolicy"] == "Fail"
        (rule,) = policy["matchConstraints"]["resourceRules"]
        assert (rule["apiGroups"], rule["resources"]) == (["batch"], ["jobs"])
        assert "CREATE" in rule["operations"]
        (condition,) = policy["matchConditions"]
        for account in CREATORS.values():
            assert f"'{username(account)}'" in condition["expression"], name
        validations = [v["expression"] for v in policy["validations"]]
        assert len(validations) == len(RULES)
        for expression, subject in zip(validations, RULES, strict=True):
            assert subject in expression, f"{name}: the rule on {subject}: {expression}"
        binding = m.named(objects, "ValidatingAdmissionPolicyBinding", POLICY)["spec"]
        assert binding["policyName"] == POLICY and binding["validationActions"] == ["Deny"]
        assert binding["paramRef"] == {
            "name": POLICY,
            "namespace": kustomize.NAMESPACE,
            "parameterNotFoundAction": "Deny",
        }
        assert binding["matchResources"]["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": kustomize.NAMESPACE}
        }


def test_the_parameters_are_the_creators_own(built):
    """Each creator's Jobs may run its image, its Jobs' account (no token, no Role), its own
    certificate Secret, and (the trainer) the claims it mounts, the episodes read-only as it
    mounts them itself."""
    for combination, objects in built.items():
        name = combination.name
        allowed = params(objects)
        bound = {s["name"] for b in m.of_kind(objects, "RoleBinding") for s in b["subjects"]}
        for creator in CREATORS:
            (container,) = m.pod_spec(m.named(objects, "Deployment", creator))["containers"]
            env = m.env(container)
            assert allowed[creator]["image"] == env["GRASPFLEET_K8S_IMAGE"], name
            account = m.named(objects, "ServiceAccount", allowed[creator]["service-account"])
            assert account["automountServiceAccountToken"] is False, name
            assert account["metadata"]["name"] not in bound, name
            assert allowed[creator]["secrets"] == [f"graspfleet-tls-{creator}"], name
        (trainer,) = m.pod_spec(m.named(objects, "Deployment", "trainer"))["containers"]
        mounts = {v["mountPath"]: v for v in trainer["volumeMounts"]}
        claims = dict(p.split("=") for p in m.env(trainer)["GRASPFLEET_K8S_VOLUMES"].split(","))
        assert allowed["trainer"]["claims"] == list(claims), name
        read_only = [c for c, path in claims.items() if mounts[path].get("readOnly")]
        assert read_only == allowed["trainer"]["read-only-claims"] == ["graspfleet-episodes"]
        assert allowed["sim-farm"]["claims"] == allowed["sim-farm"]["read-only-claims"] == [""]


def test_the_jobs_the_creators_build_pass_the_policy(built):
    """The trainer's training and evaluation Jobs and the farm's shard Jobs, as each build's
    settings make them: a deadline, the image, the account, the volumes, the labels."""
    for combination, objects in built.items():
        allowed = params(objects)
        for creator, job in created_jobs(objects):
            at = f"{combination.name}: {creator}'s {job['metadata']['labels']}"
            assert job_violations(job, allowed[creator]) == [], at
            assert job["spec"]["activeDeadlineSeconds"] > 0, at


def test_the_trainers_jobs_mount_the_episodes_read_only(built):
    objects = built[kustomize.Combination("root")]
    allowed = params(objects)
    for creator, job in created_jobs(objects):
        assert read_only_violations(job, allowed[creator]) == [], creator


@pytest.mark.parametrize(
    "plant",
    [
        lambda job: job["spec"].pop("activeDeadlineSeconds"),
        lambda job: job["spec"]["template"]["spec"]["containers"][0].update(image="busybox:1"),
        lambda job: job["spec"]["template"]["spec"].update(initContainers=[{"image": "x"}]),
        lambda job: job["spec"]["template"]["spec"].update(serviceAccountName="graspfleet-trainer"),
        lambda job: job["spec"]["template"]["spec"].update(automountServiceAccountToken=True),
        lambda job: job["spec"]["template"]["spec"]["volumes"].append(
            {"name": "host", "hostPath": {"path": "/"}}
        ),
        lambda job: job["spec"]["template"]["spec"]["volumes"].append(
            {"name": "ca", "secret": {"secretName": "graspfleet-ca"}}
        ),
        lambda job: job["spec"]["template"]["spec"]["volumes"].append(
            {"name": "db", "persistentVolumeClaim": {"claimName": "data-postgres-0"}}
        ),
        lambda job: job["spec"]["template"]["metadata"]["labels"].update(
            {"app.kubernetes.io/name": "episode-store"}
        ),
        lambda job: job["spec"]["template"]["metadata"]["labels"].update(
            {"graspfleet.io/client": "true"}
        ),
    ],
    ids=[
        "no-deadline",
        "image",
        "init-container",
        "account",
        "token",
        "host-path",
        "other-secret",
        "other-claim",
        "label",
        "operator-label",
    ],
)
def test_each_rule_refuses_what_it_should(built, plant):
    objects = built[kustomize.Combination("root")]
    allowed = params(objects)
    for creator, job in created_jobs(objects):
        job = copy.deepcopy(job)
        job["spec"].setdefault("activeDeadlineSeconds", 1)
        plant(job)
        assert job_violations(job, allowed[creator]), creator


def test_the_read_only_rule_refuses_a_writable_episode_volume(built):
    allowed = params(built[kustomize.Combination("root")])["trainer"]
    episodes = {"name": "e", "persistentVolumeClaim": {"claimName": "graspfleet-episodes"}}
    container = {"name": "job", "volumeMounts": [{"name": "e"}]}
    job = {"spec": {"template": {"spec": {"containers": [container], "volumes": [episodes]}}}}
    assert read_only_violations(job, allowed)
    container["volumeMounts"][0]["readOnly"] = True
    assert read_only_violations(job, allowed) == []


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _usage(pods: list[tuple[dict, int]]) -> dict[str, float]:
    """What `count` copies of each pod spec ask for, as the quota counts it."""
    total = dict.fromkeys(QUOTA_RESOURCES, 0.0)
    for spec, count in pods:
        total["pods"] += count
        for section in ("requests", "limits"):
            resources = [c["resources"][section] for c in spec["containers"]]
            total[f"{section}.cpu"] += count * sum(_cpu(str(r["cpu"])) for r in resources)
            memory = sum(m.quantity_bytes(r["memory"]) for r in resources)
            total[f"{section}.memory"] += count * memory
    return total


def largest_pods(objects: list[dict]) -> list[tuple[dict, int]]:
    """(pod spec, count) of the fleet at its largest: every workload at its autoscaler's
    maximum, the trainer's concurrent runs (each the larger of a training and an evaluation
    Job) and the sim-farm's active collections' shard pods, each collection's Job running
    its parallelism."""
    most = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"]
        for h in m.of_kind(objects, "HorizontalPodAutoscaler")
    }
    pods = [
        (m.pod_spec(w), most.get(w["metadata"]["name"], w["spec"].get("replicas", 1)))
        for w in m.workloads(objects)
    ]
    runs = [m.training_job(objects), m.evaluation_job(objects)]
    run = max(
        (j["spec"]["template"]["spec"] for j in runs),
        key=lambda spec: _usage([(spec, 1)])["limits.memory"],
    )
    shard = m.shard_job(objects)
    shards = m.sim_farm_config(objects).max_active_collections * shard["spec"]["parallelism"]
    concurrent = m.trainer_config(objects).max_concurrent_runs
    return [*pods, (run, concurrent), (shard["spec"]["template"]["spec"], shards)]


def test_the_quota_holds_the_fleet_at_its_largest_with_its_jobs(built):
    """A runaway Job creator stops at the quota, the fleet at its largest never does."""
    for combination, objects in built.items():
        hard = m.named(objects, "ResourceQuota", "graspfleet")["spec"]["hard"]
        assert set(hard) == {"count/jobs.batch", *QUOTA_RESOURCES}
        for resource, needed in _usage(largest_pods(objects)).items():
            quota = hard[resource]
            limit = m.quantity_bytes(quota) if resource.endswith("memory") else _cpu(quota)
            assert needed <= limit, f"{combination.name}: {resource} needs {needed}, quota {quota}"
        # Finished Jobs count until their TTL (a day) deletes them.
        active = m.trainer_config(objects).max_concurrent_runs
        active += m.sim_farm_config(objects).max_active_collections
        assert int(hard["count/jobs.batch"]) >= 10 * active
