"""The GraphQL documents the client sends. Every value travels as a variable; nothing is
ever formatted into these strings. Only fields of RunPod's published schema are used
(the test stand-in validates every request against it)."""

from __future__ import annotations

POD_FIELDS = """
fragment PodFields on Pod {
  id
  name
  desiredStatus
  costPerHr
  imageName
  gpuCount
  podType
  machineId
  env
  machine { gpuDisplayName }
  runtime {
    uptimeInSeconds
    ports { ip isIpPublic privatePort publicPort type }
    gpus { id gpuUtilPercent memoryUtilPercent }
  }
}
"""

_PRICE = "{ uninterruptablePrice minimumBidPrice stockStatus }"

GPU_TYPES = f"""
query GpuTypes($gpuCount: Int!, $filter: GpuTypeFilter) {{
  gpuTypes(input: $filter) {{
    id
    displayName
    memoryInGb
    secureCloud
    communityCloud
    securePrice
    communityPrice
    secureSpotPrice
    communitySpotPrice
    secureLowestPrice: lowestPrice(input: {{gpuCount: $gpuCount, secureCloud: true}}) {_PRICE}
    communityLowestPrice: lowestPrice(input: {{gpuCount: $gpuCount, secureCloud: false}}) {_PRICE}
  }}
}}
"""

MYSELF = """
query Myself {
  myself { id }
}
"""

POD = (
    """
query Pod($input: PodFilter!) {
  pod(input: $input) { ...PodFields }
}
"""
    + POD_FIELDS
)

MY_PODS = (
    """
query MyPods {
  myself { pods { ...PodFields } }
}
"""
    + POD_FIELDS
)

DEPLOY_ON_DEMAND = (
    """
mutation DeployOnDemand($input: PodFindAndDeployOnDemandInput!) {
  podFindAndDeployOnDemand(input: $input) { ...PodFields }
}
"""
    + POD_FIELDS
)

RENT_INTERRUPTABLE = (
    """
mutation RentInterruptable($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { ...PodFields }
}
"""
    + POD_FIELDS
)

TERMINATE = """
mutation Terminate($input: PodTerminateInput!) {
  podTerminate(input: $input)
}
"""

STOP = (
    """
mutation Stop($input: PodStopInput!) {
  podStop(input: $input) { ...PodFields }
}
"""
    + POD_FIELDS
)

ALL = {
    "GpuTypes": GPU_TYPES,
    "Myself": MYSELF,
    "Pod": POD,
    "MyPods": MY_PODS,
    "DeployOnDemand": DEPLOY_ON_DEMAND,
    "RentInterruptable": RENT_INTERRUPTABLE,
    "Terminate": TERMINATE,
    "Stop": STOP,
}
